//! What podnet-operator and podnet-daemon share: the `/healthz`, `/readyz` and
//! `/metrics` endpoint, logging setup, signal handling, the API clients and watches.

mod client;
mod flags;
mod http;
mod logging;
mod watch;

pub use client::{
    ApiClients, ClientError, REQUEST_READ_TIMEOUT, WATCH_READ_TIMEOUT, WATCH_TIMEOUT_SECS,
};
pub use flags::{FlagError, Flags};
pub use http::{Health, serve_ops};
pub use logging::{LogFormat, init_logging};
pub use watch::{WatchBackoff, spawn_reflector, strip_managed_fields};

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
