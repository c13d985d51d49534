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
    Cache, Named, WatchBackoff, Watched, spawn_cache, spawn_reflector, strip_managed_fields,
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

/// Tunes glibc's malloc for a long-running process whose memory is mostly a cache.
/// - Caps the arenas at `arenas`. glibc gives each thread that allocates while the
///   others hold their arenas an arena of its own (up to eight per core) and hands
///   little of their freed memory back: the daemon's threads (two runtime workers, the
///   one that takes over while a pass blocks in place, netlink's request threads) left
///   its peak RSS at 37–39 MiB for 5,000 peers; 31–34 MiB with two arenas, 29–30 MiB
///   with one (bench-daemon, docs/benchmarks.md).
/// - Fixes the mmap threshold at 128 KiB. glibc raises it, by default, to the size of
///   any mmapped block freed (up to 32 MiB), after which large transient buffers (a
///   list page's body, a job list, a hash table being grown) are carved from the heap
///   and leave holes in it when freed; fixed, they go back to the kernel on free.
///
/// Call it first thing in `main`, before any thread starts. Other C libraries (musl)
/// have no arenas: nothing to do there.
#[allow(unsafe_code)]
pub fn tune_malloc(arenas: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no pointer is involved, and it
    // is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

/// Hands the pages malloc holds free back to the kernel (glibc's `malloc_trim`): after
/// a phase that built large transient structures, so that the process's resident size
/// follows what it keeps, not what it once held. Costs a walk over the free lists
/// (milliseconds at most); call it after such phases, not on a hot path.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel; it touches no memory
    // the program owns and is thread-safe (it takes each arena's lock).
    unsafe {
        libc::malloc_trim(0);
    }
}
