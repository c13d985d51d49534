//! The one wait loop of the lab and its tests: poll a probe until it yields, or fail
//! after a deadline naming what was awaited and the probe's last error. Probes are the
//! tests' own code, so they speak `anyhow`.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a probe runs.
const PERIOD: Duration = Duration::from_millis(200);

/// A wait that ran out.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {what}{}", last.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
pub struct WaitTimeout {
    /// What was awaited.
    pub what: String,
    /// How long.
    pub timeout: Duration,
    /// The probe's last error, if its last run failed.
    pub last: Option<String>,
}

/// Runs `probe` every 200 ms until it returns `Ok(Some(value))`; an `Err` from the
/// probe is remembered (for the timeout message) and the wait goes on.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<T, WaitTimeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(format!("{e:#}")),
        };
        if Instant::now() > deadline {
            return Err(WaitTimeout {
                what: what.to_string(),
                timeout,
                last,
            });
        }
        tokio::time::sleep(PERIOD).await;
    }
}

/// [`wait_for`] a condition: until `probe` returns `Ok(true)`.
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<(), WaitTimeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    wait_for(what, timeout, || {
        let fut = probe();
        async move { fut.await.map(|ok| ok.then_some(())) }
    })
    .await
}
