//! Watched caches that wake a control loop.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use tokio::sync::Notify;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, info, warn};

/// What a watched cache can hold: a cluster-wide or namespaced API object that decodes
/// from JSON and moves between tasks.
pub trait Watched:
    Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Starts a watch of `api` into a cache; every change (and every error, after which the
/// watch retries with [`WatchBackoff`] while the cache keeps its content) wakes `notify`.
/// `modify` trims each object before it is cached.
pub fn spawn_reflector<K>(api: Api<K>, notify: Arc<Notify>, modify: fn(&mut K)) -> Store<K>
where
    K: Watched,
{
    reflect(api, notify, modify, None)
}

/// Like [`spawn_reflector`], and also sends each object of the *first* list to
/// `first_list` as its page arrives (the cache itself shows the list only once it is
/// complete). The sender is dropped when that list is complete, which ends the
/// receiver's stream; later re-lists (after a watch error) are not sent. The channel
/// is bounded and never waited on: when its reader falls behind and it fills, the
/// sender is dropped there and then (the reader gets what is queued, then the end), so
/// a slow reader costs at most the channel's capacity in memory and never holds up
/// the cache.
pub fn spawn_reflector_with_first_list<K>(
    api: Api<K>,
    notify: Arc<Notify>,
    modify: fn(&mut K),
    first_list: Sender<K>,
) -> Store<K>
where
    K: Watched,
{
    reflect(api, notify, modify, Some(first_list))
}

fn reflect<K>(
    api: Api<K>,
    notify: Arc<Notify>,
    modify: fn(&mut K),
    mut first_list: Option<Sender<K>>,
) -> Store<K>
where
    K: Watched,
{
    let (store, writer) = reflector::store();
    let events = watcher(
        api,
        watcher::Config::default().timeout(crate::WATCH_TIMEOUT_SECS),
    )
    .backoff(WatchBackoff::default())
    .modify(modify)
    .reflect(writer);
    let kind = K::kind(&()).into_owned();
    tokio::spawn(async move {
        futures::pin_mut!(events);
        // The first error of an outage is a warning, the rest of it debug (one line per
        // retry would flood the log), and the recovery says how many retries it took.
        let mut failures = 0u32;
        while let Some(ev) = events.next().await {
            match ev {
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        warn!(%kind, error = %e, "watch failed; retrying with backoff, the cache keeps its content meanwhile");
                    } else {
                        debug!(%kind, error = %e, failures, "watch still failing");
                    }
                }
                Ok(ev) => {
                    if failures > 0 {
                        info!(%kind, failures, "watch recovered");
                        failures = 0;
                    }
                    match ev {
                        watcher::Event::InitApply(obj) => {
                            if let Some(tx) = &first_list {
                                match tx.try_send(obj) {
                                    Ok(()) => {}
                                    Err(TrySendError::Full(_)) => {
                                        debug!(%kind, "the first list's reader fell behind; the complete list takes over");
                                        first_list = None;
                                    }
                                    Err(TrySendError::Closed(_)) => first_list = None,
                                }
                            }
                        }
                        watcher::Event::InitDone => first_list = None,
                        _ => {}
                    }
                }
            }
            notify.notify_one();
        }
    });
    store
}

/// How a watch retries after an error: from 250 ms, doubling, at most 4 s, each delay
/// jittered down by up to half (so a fleet of daemons does not reconnect in lockstep);
/// back to the start after any success. kube's default caps at 30 s, which after an API
/// server outage leaves a node up to half a minute behind for no benefit: a watch is one
/// request per retry.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
    seed: u64,
}

impl WatchBackoff {
    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(4);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Self {
            next: Self::MIN,
            seed: (u64::from(nanos) << 20) ^ u64::from(std::process::id()) | 1,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // xorshift64: enough randomness for jitter.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        let delay = self.next.mul_f64(fraction);
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// The trim most caches want: managed fields are large and never read.
pub fn strip_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = b.by_ref().take(8).collect();
        let mut nominal = WatchBackoff::MIN;
        for d in &delays {
            assert!(*d <= nominal && *d >= nominal / 2, "{d:?} vs {nominal:?}");
            nominal = (nominal * 2).min(WatchBackoff::MAX);
        }
        assert!(delays.iter().all(|d| *d <= WatchBackoff::MAX));
        b.reset();
        assert!(b.next().is_some_and(|d| d <= WatchBackoff::MIN));
    }
}
