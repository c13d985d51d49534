//! podnet-operator: allocates a pod CIDR per node into NodeRoute status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use podnet_common::{Health, LogFormat, init_logging, serve_ops, shutdown_signal};
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
    log_format: LogFormat,
    log_level: String,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut flags = std::collections::HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--version" => {
                println!("podnet-operator {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            f if f.starts_with("--") => {
                let (k, v) = match f.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (
                        f.to_string(),
                        it.next().with_context(|| format!("{f} needs a value"))?,
                    ),
                };
                flags.insert(k.trim_start_matches("--").to_string(), v);
            }
            other => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    let get = |flag: &str, env: &str| -> Option<String> {
        flags.get(flag).cloned().or_else(|| std::env::var(env).ok())
    };
    let secs = |flag: &str, env: &str, default: u64| -> anyhow::Result<Duration> {
        Ok(Duration::from_millis(match get(flag, env) {
            Some(v) => {
                (v.parse::<f64>()
                    .with_context(|| format!("--{flag} {v:?}"))?
                    * 1000.0) as u64
            }
            None => default * 1000,
        }))
    };
    let identity = get("identity", "POD_NAME").unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let namespace = get("lease-namespace", "POD_NAMESPACE").unwrap_or_else(|| "kube-system".into());
    let mut lease = LeaseConfig::new(namespace, identity);
    lease.lease_duration = secs("lease-duration", "PODNET_LEASE_DURATION", 15)?;
    lease.renew_deadline = secs("renew-deadline", "PODNET_RENEW_DEADLINE", 10)?;
    lease.retry_period = secs("retry-period", "PODNET_RETRY_PERIOD", 2)?;
    if lease.renew_deadline >= lease.lease_duration {
        bail!("--renew-deadline must be shorter than --lease-duration");
    }
    Ok(Some(Args {
        ops_addr: get("ops-addr", "PODNET_OPS_ADDR")
            .unwrap_or_else(|| "0.0.0.0:9090".into())
            .parse()
            .context("--ops-addr")?,
        lease,
        concurrency: get("concurrency", "PODNET_CONCURRENCY")
            .map(|v| v.parse())
            .transpose()
            .context("--concurrency")?
            .unwrap_or(32),
        set_node_pod_cidrs: get("set-node-pod-cidrs", "PODNET_SET_NODE_POD_CIDRS")
            .map(|v| v.parse::<bool>())
            .transpose()
            .context("--set-node-pod-cidrs takes true or false")?
            .unwrap_or(false),
        log_format: get("log-format", "PODNET_LOG_FORMAT")
            .unwrap_or_else(|| "text".into())
            .parse()
            .map_err(anyhow::Error::msg)?,
        log_level: get("log-level", "PODNET_LOG_LEVEL").unwrap_or_else(|| "info".into()),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    init_logging(args.log_format, &args.log_level);
    let client = kube::Client::try_default()
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
        client.clone(),
        args.lease.clone(),
        leadership.clone(),
        stop_rx.clone(),
    ));
    let operator = Operator::new(
        client,
        leadership,
        metrics,
        health,
        &args.lease.identity,
        ControllerConfig {
            concurrency: args.concurrency.max(1),
            set_node_pod_cidrs: args.set_node_pod_cidrs,
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
