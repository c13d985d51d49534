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
use clap::{Args, CommandFactory, Parser, Subcommand};
use podnet_common::{
    ApiClients, Health, LogArgs, init_logging, parse_seconds, serve_ops, shutdown_signal,
};
use podnet_contract::{
    DEFAULT_BRIDGE, DEFAULT_CNI_BIN_DIR, DEFAULT_CNI_CONF_DIR, DEFAULT_IPAM_DIR, DEFAULT_STATE_DIR,
    PLUGIN_TYPE, ROUTE_PROTOCOL,
};
use podnet_daemon::controller::{Daemon, DaemonConfig, DaemonMetrics};
use podnet_daemon::firewall::{self, Backend, Runner, Setting};
use podnet_daemon::{cniconf, routes, state};
use podnet_netlink::Netlink;
use prometheus_client::registry::Registry;
use tokio::sync::{Mutex, watch};
use tracing::info;

/// podnet's node agent: routes to every other node's pod CIDR, the CNI config for
/// podnet-cni, masquerade for traffic leaving the cluster, and the node's Programmed
/// condition — from NodeRoutes and PodNetworks. Without a subcommand it runs the agent.
#[derive(Parser)]
#[command(
    name = "podnet-daemon",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the node agent (the default).
    Run(RunArgs),
    /// Copies podnet-cni into the CNI bin directory, atomically (the chart's init
    /// container).
    InstallCni(InstallArgs),
    /// Removes everything podnet installed on this node: its routes, masquerade chains,
    /// CNI config and plugin, bridge, lease store and saved state.
    Cleanup(CleanupArgs),
}

/// Where podnet lives on the node.
#[derive(Args, Clone)]
struct NodeArgs {
    /// Program this network namespace instead of the daemon's own (tests and the lab).
    #[arg(long, env = "PODNET_NETNS")]
    netns: Option<PathBuf>,
    /// Directory of the CNI configuration the runtime reads.
    #[arg(long, env = "PODNET_CNI_CONF_DIR", default_value = DEFAULT_CNI_CONF_DIR)]
    cni_conf_dir: PathBuf,
    /// The bridge pods attach to.
    #[arg(long, env = "PODNET_BRIDGE", default_value = DEFAULT_BRIDGE)]
    bridge: String,
    /// podnet-cni's lease directory.
    #[arg(long, env = "PODNET_IPAM_DIR", default_value = DEFAULT_IPAM_DIR)]
    ipam_dir: PathBuf,
    /// Where the last programmed state is kept (empty: keep none).
    #[arg(long, env = "PODNET_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// This node's name (the chart sets it from the pod's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    #[command(flatten)]
    node: NodeArgs,
    /// Seconds between full checks of the kernel state (drift repair).
    #[arg(long, env = "PODNET_RESYNC", default_value = "10", value_parser = parse_seconds)]
    resync: Duration,
    /// Seconds to wait for the API server at start before programming the saved state.
    #[arg(long, env = "PODNET_STARTUP_GRACE", default_value = "10", value_parser = parse_seconds)]
    startup_grace: Duration,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "PODNET_OPS_ADDR", default_value = "0.0.0.0:9091")]
    ops_addr: SocketAddr,
    /// The firewall masquerade and hostPorts go into: auto follows kube-proxy's mode
    /// when it can be seen, else nftables if the kernel has it, else iptables.
    #[arg(long, env = "PODNET_FIREWALL", value_enum, default_value = "auto")]
    firewall: Setting,
    /// Enforce NetworkPolicy (always in nftables, table `inet podnet-policy`); `false`
    /// removes that table.
    #[arg(long, env = "PODNET_NETWORK_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    network_policy: bool,
    /// With network policy on, also enforce ClusterNetworkPolicy, the cluster-admin
    /// tiers of sigs.k8s.io/network-policy-api (its CRD must be installed; the chart
    /// ships it).
    #[arg(long, env = "PODNET_CLUSTER_NETWORK_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    cluster_network_policy: bool,
    /// Log packets network policy drops to the kernel log (prefix `podnet-drop <in|out>
    /// <namespace/pod>: `), at most this many per second and drop rule; 0 logs nothing
    /// (drops are counted either way).
    #[arg(long, env = "PODNET_POLICY_LOG_DROPS", default_value_t = 0)]
    policy_log_drops: u32,
}

#[derive(Args)]
struct InstallArgs {
    /// The podnet-cni binary to install.
    #[arg(
        long,
        env = "PODNET_CNI_SRC",
        default_value = "/usr/local/bin/podnet-cni"
    )]
    cni_src: PathBuf,
    /// The CNI bin directory of the node.
    #[arg(long, env = "PODNET_CNI_BIN_DIR", default_value = DEFAULT_CNI_BIN_DIR)]
    cni_bin_dir: PathBuf,
}

#[derive(Args)]
struct CleanupArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The CNI bin directory podnet-cni was installed into.
    #[arg(long, env = "PODNET_CNI_BIN_DIR", default_value = DEFAULT_CNI_BIN_DIR)]
    cni_bin_dir: PathBuf,
    /// After cleaning, wait until SIGTERM: as the container of a DaemonSet, a pod that
    /// runs says its node is clean (examples/cleanup-daemonset.yaml).
    #[arg(long)]
    wait: bool,
}

fn netlink(netns: &Option<PathBuf>) -> anyhow::Result<Netlink> {
    Ok(match netns {
        Some(ns) => Netlink::in_netns(ns)?,
        None => Netlink::new()?,
    })
}

fn remove_file(path: &std::path::Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

fn remove_dir(path: &std::path::Path) -> anyhow::Result<bool> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes everything podnet installed on this node.
fn cleanup(args: &CleanupArgs) -> anyhow::Result<()> {
    let node = &args.node;
    let mut nl = netlink(&node.netns)?;
    let kernel = routes::KernelView {
        routes: routes::read_routes(&mut nl)?,
        addresses: Vec::new(),
    };
    let report = routes::apply_routes(&mut nl, &routes::plan_routes(&[], &kernel));
    if !report.errors.is_empty() {
        bail!("removing podnet's routes: {}", report.errors.join("; "));
    }
    // The nexthop objects the routes went through (apply_routes prunes only after a
    // change; here also when the routes were gone already).
    let nexthops_removed = nl
        .prune_nexthops(ROUTE_PROTOCOL)
        .context("removing podnet's nexthop objects")?;
    // Every firewall: podnet's rules may be in any of them (a backend switched).
    let runner = Runner {
        netns: node.netns.clone(),
    };
    let mut firewalls = Vec::new();
    let mut hostport_firewalls = Vec::new();
    for backend in Backend::ALL {
        let removed = [
            firewall::driver(backend, runner.clone()).remove(),
            firewall::hostports::remove_from(backend, &runner),
        ];
        for (i, r) in removed.into_iter().enumerate() {
            match r {
                Ok(true) if i == 0 => firewalls.push(backend.as_str()),
                Ok(true) => hostport_firewalls.push(backend.as_str()),
                Ok(false) => {}
                // A variant this node does not have (no legacy iptables, no nftables).
                Err(e) if e.detail.contains("No such file") || e.detail.contains("not found") => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let policy_removed = match firewall::policy::apply(&runner, None) {
        Ok(removed) => removed,
        Err(e) if e.detail.contains("No such file") || e.detail.contains("not found") => false,
        Err(e) => return Err(e.into()),
    };
    let conf = node.cni_conf_dir.join(cniconf::CONFLIST);
    let conf_removed = remove_file(&conf)?;
    let plugin_removed = remove_file(&args.cni_bin_dir.join(PLUGIN_TYPE))?;
    let bridge_removed = nl.del_link_by_name(&node.bridge)?;
    let leases_removed = remove_dir(&node.ipam_dir)?;
    let state_removed = if node.state_dir.as_os_str().is_empty() {
        false
    } else {
        remove_file(&node.state_dir.join(state::FILE))?
    };
    println!(
        "removed {} podnet routes (protocol {ROUTE_PROTOCOL}) and {nexthops_removed} nexthop objects, masquerade rules from [{}], hostPort rules from [{}], the network policy table ({policy_removed}), {} ({conf_removed}), {} ({plugin_removed}), bridge {} ({bridge_removed}), leases {} ({leases_removed}), saved state ({state_removed})",
        report.removed,
        firewalls.join(", "),
        hostport_firewalls.join(", "),
        conf.display(),
        args.cni_bin_dir.join(PLUGIN_TYPE).display(),
        node.bridge,
        node.ipam_dir.display(),
    );
    Ok(())
}

fn install_cni(args: &InstallArgs) -> anyhow::Result<()> {
    if !args.cni_src.is_file() {
        bail!("{} not found (--cni-src)", args.cni_src.display());
    }
    let dst = cniconf::install_binary(&args.cni_src, &args.cni_bin_dir, PLUGIN_TYPE)
        .with_context(|| format!("installing into {}", args.cni_bin_dir.display()))?;
    println!("installed {}", dst.display());
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let Some(node_name) = args.node_name else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "NODE_NAME (or --node-name) is required to run the agent",
            )
            .exit();
    };
    let state_dir = Some(args.node.state_dir).filter(|p| !p.as_os_str().is_empty());
    let cfg = DaemonConfig {
        node_name,
        netns: args.node.netns,
        cni_conf_dir: args.node.cni_conf_dir,
        bridge: args.node.bridge,
        ipam_dir: args.node.ipam_dir,
        state_dir,
        resync: args.resync,
        startup_grace: args.startup_grace,
        firewall: args.firewall,
        network_policy: args.network_policy,
        cluster_network_policy: args.cluster_network_policy,
        policy_log_drops: args.policy_log_drops,
    };
    let clients = ApiClients::infer()
        .await
        .context("connecting to the Kubernetes API")?;
    let mut registry = Registry::default();
    let metrics = DaemonMetrics::register(&mut registry);
    let health = Arc::new(Health::default());
    let (bound, _server) = serve_ops(
        args.ops_addr,
        Arc::clone(&health),
        Arc::new(Mutex::new(registry)),
    )
    .await
    .with_context(|| format!("binding {}", args.ops_addr))?;
    info!(node = %cfg.node_name, addr = %bound, "podnet-daemon starting");
    let (stop_tx, stop_rx) = watch::channel(false);
    let daemon = tokio::spawn(Daemon::new(clients, cfg, health, metrics).run(stop_rx));
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = daemon.await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // One arena: the daemon's threads take turns more than they allocate at once.
    podnet_common::tune_malloc(1);
    // Two workers: the reconcile pass blocks one in place (controller::off_runtime)
    // while the other serves the probes, metrics and watches.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(daemon_main())
}

async fn daemon_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log.format, &cli.log.level);
    match cli.command {
        None => run(cli.run).await,
        Some(Cmd::Run(args)) => run(args).await,
        Some(Cmd::InstallCni(args)) => install_cni(&args),
        Some(Cmd::Cleanup(args)) => {
            cleanup(&args)?;
            if args.wait {
                shutdown_signal().await;
            }
            Ok(())
        }
    }
}
