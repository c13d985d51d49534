//! What podnet-operator and podnet-daemon share: the `/healthz`, `/readyz` and
//! `/metrics` endpoint, logging setup, signal handling, the API clients and watches.
//!
//! This crate must never import podnet's own crates: it sits below them all.

mod client;
mod http;
mod logging;
mod watch;

pub use client::{
    ApiClients, ClientError, REQUEST_READ_TIMEOUT, WATCH_READ_TIMEOUT, WATCH_TIMEOUT_SECS,
};
pub use http::{Health, serve_ops};
pub use logging::{LogArgs, LogFormat, init_logging};
pub use watch::{WatchBackoff, spawn_reflector, strip_managed_fields};

/// Parses a command-line duration given in (fractional) seconds, such as `10` or `2.5`.
pub fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

/// Resolves once SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can only be killed; never resolve.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
