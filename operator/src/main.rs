//! podnet-operator: allocates a pod CIDR per node into NodeRoute status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use podnet_common::{
    ApiClients, Flags, Health, LogFormat, init_logging, serve_ops, shutdown_signal,
};
use podnet_operator::controller::{ControllerConfig, Operator};
use podnet_operator::leader::{self, Leadership, LeaseConfig};
use podnet_operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use tokio::sync::{Mutex, watch};
use tracing::info;

const USAGE: &str =
    "usage: podnet-operator [--version] [--ops-addr ADDR] [--lease-namespace NS] [--identity ID]
       [--lease-duration SECS] [--renew-deadline SECS] [--retry-period SECS]
       [--concurrency N] [--set-node-pod-cidrs true|false] [--log-format text|json] [--log-level LEVEL]
Every flag can also be given as an environment variable: PODNET_OPS_ADDR, POD_NAMESPACE,
POD_NAME, PODNET_LEASE_DURATION, ... (upper case, PODNET_ prefix).";

struct Args {
    ops_addr: SocketAddr,
    lease: LeaseConfig,
    concurrency: usize,
    set_node_pod_cidrs: bool,
    quarantine: Duration,
    log_format: LogFormat,
    log_level: String,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "version") {
        println!("podnet-operator {}", env!("CARGO_PKG_VERSION"));
        return Ok(None);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(None);
    }
    let flags = Flags::parse(args)?;
    if let Some(other) = flags.positional.first() {
        bail!("unexpected argument {other:?}\n{USAGE}");
    }
    let identity = flags.get("identity", "POD_NAME").unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let namespace = flags.get_or("lease-namespace", "POD_NAMESPACE", "kube-system");
    let mut lease = LeaseConfig::new(namespace, identity);
    lease.lease_duration = flags.seconds(
        "lease-duration",
        "PODNET_LEASE_DURATION",
        Duration::from_secs(15),
    )?;
    lease.renew_deadline = flags.seconds(
        "renew-deadline",
        "PODNET_RENEW_DEADLINE",
        Duration::from_secs(10),
    )?;
    lease.retry_period = flags.seconds(
        "retry-period",
        "PODNET_RETRY_PERIOD",
        Duration::from_secs(2),
    )?;
    if lease.renew_deadline >= lease.lease_duration {
        bail!("--renew-deadline must be shorter than --lease-duration");
    }
    Ok(Some(Args {
        ops_addr: flags.parse_or(
            "ops-addr",
            "PODNET_OPS_ADDR",
            SocketAddr::from(([0, 0, 0, 0], 9090)),
        )?,
        lease,
        concurrency: flags.parse_or("concurrency", "PODNET_CONCURRENCY", 32)?,
        quarantine: flags.seconds(
            "cidr-quarantine",
            "PODNET_CIDR_QUARANTINE",
            Duration::from_secs(300),
        )?,
        set_node_pod_cidrs: flags.parse_or(
            "set-node-pod-cidrs",
            "PODNET_SET_NODE_POD_CIDRS",
            false,
        )?,
        log_format: flags
            .get_or("log-format", "PODNET_LOG_FORMAT", "text")
            .parse()
            .map_err(anyhow::Error::msg)?,
        log_level: flags.get_or("log-level", "PODNET_LOG_LEVEL", "info"),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    init_logging(args.log_format, &args.log_level);
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
    info!(addr = %bound, identity = %args.lease.identity, "podnet-operator starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let leadership = Leadership::default();
    let election = tokio::spawn(leader::run(
        clients.request.clone(),
        args.lease.clone(),
        leadership.clone(),
        stop_rx.clone(),
    ));
    let operator = Operator::new(
        clients,
        leadership,
        metrics,
        health,
        &args.lease.identity,
        ControllerConfig {
            concurrency: args.concurrency.max(1),
            set_node_pod_cidrs: args.set_node_pod_cidrs,
            quarantine: args.quarantine,
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
