//! Watched caches that wake a control loop.

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use tokio::sync::Notify;
use tracing::debug;

/// Starts a watch of `api` into a cache; every change (and every error, after which the
/// watch retries with backoff while the cache keeps its content) wakes `notify`.
/// `modify` trims each object before it is cached.
pub fn spawn_reflector<K>(api: Api<K>, notify: Arc<Notify>, modify: fn(&mut K)) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(modify)
        .reflect(writer)
        .touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(events);
        while let Some(ev) = events.next().await {
            if let Err(e) = ev {
                debug!(error = %e, "watch error (retrying with backoff)");
            }
            notify.notify_one();
        }
    });
    store
}

/// The trim most caches want: managed fields are large and never read.
pub fn strip_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}
