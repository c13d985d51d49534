//! podnet-operator: allocates a pod CIDR per node into NodeRoute status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use podnet_common::{
    ApiClients, Health, LogArgs, init_logging, parse_seconds, serve_ops, shutdown_signal,
};
use podnet_operator::controller::{ControllerConfig, Operator};
use podnet_operator::leader::{self, Leadership, LeaseConfig};
use podnet_operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use tokio::sync::{Mutex, watch};
use tracing::info;

/// podnet's allocator: gives every Node one pod CIDR per IP family from the PodNetwork
/// that selects it, into its NodeRoute's status. Run two or more replicas: one leads
/// (a Lease), the others stand by.
#[derive(Parser)]
#[command(name = "podnet-operator", version)]
struct Cli {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "PODNET_OPS_ADDR", default_value = "0.0.0.0:9090")]
    ops_addr: SocketAddr,
    /// Namespace of the leader-election Lease `podnet-operator`.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    lease_namespace: String,
    /// This replica's identity in the Lease (default: hostname-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease is valid without renewal.
    #[arg(long, env = "PODNET_LEASE_DURATION", default_value = "15", value_parser = parse_seconds)]
    lease_duration: Duration,
    /// Seconds after the start of its last successful renewal that a leader stops acting
    /// as one (shorter than the lease duration).
    #[arg(long, env = "PODNET_RENEW_DEADLINE", default_value = "10", value_parser = parse_seconds)]
    renew_deadline: Duration,
    /// Seconds between renewals and acquisition attempts.
    #[arg(long, env = "PODNET_RETRY_PERIOD", default_value = "2", value_parser = parse_seconds)]
    retry_period: Duration,
    /// API writes in flight at once.
    #[arg(long, env = "PODNET_CONCURRENCY", default_value_t = 32)]
    concurrency: usize,
    /// NodeRoutes per page of the list each leadership term starts from.
    #[arg(long, env = "PODNET_LIST_PAGE_SIZE", default_value_t = 500)]
    list_page_size: u32,
    /// Also copy each node's CIDRs into an empty Node.spec.podCIDRs (needs patch on
    /// nodes).
    #[arg(long, env = "PODNET_SET_NODE_POD_CIDRS", default_value_t = false, action = clap::ArgAction::Set)]
    set_node_pod_cidrs: bool,
    /// Seconds a released node CIDR is held back from other nodes.
    #[arg(long, env = "PODNET_CIDR_QUARANTINE", default_value = "300", value_parser = parse_seconds)]
    cidr_quarantine: Duration,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> anyhow::Result<()> {
    // One arena per core: its runtime decodes watch events while it writes.
    podnet_common::tune_malloc(2);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(operator_main())
}

async fn operator_main() -> anyhow::Result<()> {
    let args = Cli::parse();
    if args.renew_deadline >= args.lease_duration {
        Cli::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                "--renew-deadline must be shorter than --lease-duration",
            )
            .exit();
    }
    init_logging(args.log.format, &args.log.level);
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let mut lease = LeaseConfig::new(args.lease_namespace.clone(), identity);
    lease.lease_duration = args.lease_duration;
    lease.renew_deadline = args.renew_deadline;
    lease.retry_period = args.retry_period;
    let clients = ApiClients::infer()
        .await
        .context("connecting to the Kubernetes API")?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let health = Arc::new(Health::default());
    let (bound, _server) = serve_ops(
        args.ops_addr,
        Arc::clone(&health),
        Arc::new(Mutex::new(registry)),
    )
    .await
    .with_context(|| format!("binding {}", args.ops_addr))?;
    info!(addr = %bound, identity = %lease.identity, "podnet-operator starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let leadership = Leadership::default();
    let election = tokio::spawn(leader::run(
        clients.request.clone(),
        lease.clone(),
        leadership.clone(),
        stop_rx.clone(),
    ));
    let operator = Operator::new(
        clients,
        leadership,
        metrics,
        health,
        &lease.identity,
        ControllerConfig {
            concurrency: args.concurrency.max(1),
            list_page: args.list_page_size.max(1),
            set_node_pod_cidrs: args.set_node_pod_cidrs,
            quarantine: args.cidr_quarantine,
            ..Default::default()
        },
    );
    let control = tokio::spawn(operator.run(stop_rx));
    shutdown_signal().await;
    info!("shutting down: releasing the lease");
    let _ = stop_tx.send(true);
    let _ = control.await;
    let _ = election.await;
    Ok(())
}
