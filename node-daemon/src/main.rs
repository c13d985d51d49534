//! podnet-daemon: programs routes, CNI config and masquerade on each node.
//!
//! ```text
//! podnet-daemon [run]       the node agent (default)
//! podnet-daemon install-cni copy podnet-cni into the CNI bin dir, atomically
//! podnet-daemon cleanup     remove everything podnet installed on this node
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use podnet_common::{
    ApiClients, Flags, Health, LogFormat, init_logging, serve_ops, shutdown_signal,
};
use podnet_daemon::controller::{Daemon, DaemonConfig, DaemonMetrics};
use podnet_daemon::desired::ROUTE_PROTOCOL;
use podnet_daemon::masquerade::Iptables;
use podnet_daemon::{cniconf, routes};
use podnet_netlink::Netlink;
use prometheus_client::registry::Registry;
use tokio::sync::{Mutex, watch};
use tracing::info;

const USAGE: &str =
    "usage: podnet-daemon [run|install-cni|cleanup] [--node-name NAME] [--netns PATH]
       [--cni-conf-dir DIR] [--cni-bin-dir DIR] [--cni-src PATH] [--bridge NAME] [--ipam-dir DIR]
       [--resync SECS] [--ops-addr ADDR] [--log-format text|json] [--log-level LEVEL]
Flags also come from the environment: NODE_NAME, PODNET_NETNS, PODNET_CNI_CONF_DIR, ...";

fn config(flags: &Flags) -> anyhow::Result<DaemonConfig> {
    Ok(DaemonConfig {
        node_name: flags
            .get("node-name", "NODE_NAME")
            .context("NODE_NAME (or --node-name) is required")?,
        netns: flags.get("netns", "PODNET_NETNS").map(PathBuf::from),
        cni_conf_dir: flags
            .get_or("cni-conf-dir", "PODNET_CNI_CONF_DIR", "/etc/cni/net.d")
            .into(),
        bridge: flags.get_or("bridge", "PODNET_BRIDGE", "podnet0"),
        ipam_dir: flags
            .get_or("ipam-dir", "PODNET_IPAM_DIR", "/run/podnet/ipam")
            .into(),
        state_dir: Some(
            flags
                .get_or(
                    "state-dir",
                    "PODNET_STATE_DIR",
                    podnet_contract::DEFAULT_STATE_DIR,
                )
                .into(),
        )
        .filter(|p: &PathBuf| !p.as_os_str().is_empty()),
        resync: flags.seconds("resync", "PODNET_RESYNC", Duration::from_secs(10))?,
        startup_grace: flags.seconds(
            "startup-grace",
            "PODNET_STARTUP_GRACE",
            Duration::from_secs(10),
        )?,
    })
}

fn netlink(cfg_netns: &Option<PathBuf>) -> anyhow::Result<Netlink> {
    Ok(match cfg_netns {
        Some(ns) => Netlink::in_netns(ns)?,
        None => Netlink::new()?,
    })
}

/// Removes podnet's routes, chains, CNI config and bridge from this node.
fn cleanup(flags: &Flags) -> anyhow::Result<()> {
    let netns = flags.get("netns", "PODNET_NETNS").map(PathBuf::from);
    let mut nl = netlink(&netns)?;
    let kernel = routes::KernelView {
        routes: routes::read_routes(&mut nl)?,
        addresses: Vec::new(),
    };
    let report = routes::apply_routes(&mut nl, &routes::plan_routes(&[], &kernel));
    if !report.errors.is_empty() {
        bail!("removing podnet's routes: {}", report.errors.join("; "));
    }
    let removed = report.removed;
    Iptables {
        netns: netns.clone(),
    }
    .apply(None)?;
    let conf = PathBuf::from(flags.get_or("cni-conf-dir", "PODNET_CNI_CONF_DIR", "/etc/cni/net.d"))
        .join(cniconf::CONFLIST);
    match std::fs::remove_file(&conf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", conf.display())),
    }
    let bridge = flags.get_or("bridge", "PODNET_BRIDGE", "podnet0");
    let bridge_removed = nl.del_link_by_name(&bridge)?;
    println!(
        "removed {removed} podnet routes (protocol {ROUTE_PROTOCOL}), the masquerade chains, {}, bridge {bridge}: {bridge_removed}",
        conf.display()
    );
    Ok(())
}

fn install_cni(flags: &Flags) -> anyhow::Result<()> {
    let src = PathBuf::from(flags.get_or("cni-src", "PODNET_CNI_SRC", "/usr/local/bin/podnet-cni"));
    let dir = PathBuf::from(flags.get_or("cni-bin-dir", "PODNET_CNI_BIN_DIR", "/opt/cni/bin"));
    if !src.is_file() {
        bail!("{} not found (--cni-src)", src.display());
    }
    let dst = cniconf::install_binary(&src, &dir, "podnet-cni")
        .with_context(|| format!("installing into {}", dir.display()))?;
    println!("installed {}", dst.display());
    Ok(())
}

async fn run(flags: &Flags) -> anyhow::Result<()> {
    let cfg = config(flags)?;
    let clients = ApiClients::infer()
        .await
        .context("connecting to the Kubernetes API")?;
    let mut registry = Registry::default();
    let metrics = DaemonMetrics::register(&mut registry);
    let health = Arc::new(Health::default());
    let ops: SocketAddr = flags.parse_or(
        "ops-addr",
        "PODNET_OPS_ADDR",
        SocketAddr::from(([0, 0, 0, 0], 9091)),
    )?;
    let (bound, _server) = serve_ops(ops, Arc::clone(&health), Arc::new(Mutex::new(registry)))
        .await
        .with_context(|| format!("binding {ops}"))?;
    info!(node = %cfg.node_name, addr = %bound, "podnet-daemon starting");
    let (stop_tx, stop_rx) = watch::channel(false);
    let daemon = tokio::spawn(Daemon::new(clients, cfg, health, metrics).run(stop_rx));
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = daemon.await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("podnet-daemon {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let flags = Flags::parse(args)?;
    let format: LogFormat = flags
        .get_or("log-format", "PODNET_LOG_FORMAT", "text")
        .parse()
        .map_err(anyhow::Error::msg)?;
    init_logging(
        format,
        &flags.get_or("log-level", "PODNET_LOG_LEVEL", "info"),
    );
    match flags.positional.first().map(String::as_str) {
        None | Some("run") => run(&flags).await,
        Some("install-cni") => install_cni(&flags),
        Some("cleanup") => cleanup(&flags),
        Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
    }
}
