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
pub use watch::{
    WatchBackoff, spawn_reflector, spawn_reflector_with_first_list, strip_managed_fields,
};

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

/// Caps glibc's malloc arenas at `max`. glibc gives each thread that allocates while the
/// others hold their arenas an arena of its own (up to eight per core) and hands little
/// of their freed memory back: the daemon's threads (two runtime workers, the one that
/// takes over while a pass blocks in place, netlink's request threads) left its peak
/// RSS at 37–39 MiB for 5,000 peers; 31–34 MiB with two arenas, 29–30 MiB with one
/// (bench-daemon, docs/benchmarks.md). Call it first thing in `main`, before any
/// thread starts.
/// Other C libraries (musl) have no arenas: nothing to do there.
#[allow(unsafe_code)]
pub fn limit_malloc_arenas(max: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no pointer is involved, and
    // it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, max);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = max;
}
