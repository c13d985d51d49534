//! Watched caches that wake a control loop.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kube::core::ClusterResourceScope;
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
    let (store, mut writer) = reflector::store();
    drive(api, notify, modify, move |ev| {
        writer.apply_watcher_event(&ev)
    });
    store
}

/// What a [`Cache`] holds of each object: a record of podnet's own, keyed by the
/// object's name.
pub trait Named: Send + Sync + 'static {
    /// The object's name (the cache's key).
    fn name(&self) -> &str;
}

/// An API object kept whole is its own record.
impl<K: Resource + Send + Sync + 'static> Named for K {
    fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }
}

/// A cache of records of podnet's own, kept up to date by a watch of a cluster-scoped
/// kind: each object is turned into its record as it arrives and the object dropped.
///
/// kube's reflector keeps every object whole (its `ObjectMeta` alone is ~360 bytes
/// inline before any string, and every optional field of spec and status takes room)
/// and keys each by a second copy of its name, uid and resourceVersion; at 20,000
/// NodeRoutes that was most of podnet-daemon's memory. A record here keeps what its
/// reader uses, and the key is the record's own name.
///
/// Like kube's store, a re-list (after a watch error) is collected apart and replaces
/// the content only once complete, so readers never see half a list.
pub struct Cache<R> {
    inner: Arc<CacheInner<R>>,
}

struct CacheInner<R> {
    records: RwLock<HashSet<ByName<R>>>,
    ready: tokio::sync::watch::Sender<bool>,
    /// Bumped after every change of `records`.
    version: AtomicU64,
}

impl<R> Clone for Cache<R> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R: Named> Cache<R> {
    fn new() -> Self {
        Self {
            inner: Arc::new(CacheInner {
                records: RwLock::new(HashSet::new()),
                ready: tokio::sync::watch::Sender::new(false),
                version: AtomicU64::new(0),
            }),
        }
    }

    fn changed(&self) {
        self.inner.version.fetch_add(1, Ordering::Release);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashSet<ByName<R>>> {
        // A writer never panics while holding the lock (it only inserts and removes).
        self.inner
            .records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<ByName<R>>> {
        self.inner
            .records
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A number that changes whenever the content does: a reader that saw version `v`
    /// and then the content knows it has not changed while the version is still `v`
    /// (read the version first).
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }

    /// Every record, in no particular order.
    pub fn state(&self) -> Vec<Arc<R>> {
        self.read().iter().map(|r| Arc::clone(&r.0)).collect()
    }

    /// The record of the object named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<R>> {
        self.read().get(name).map(|r| Arc::clone(&r.0))
    }

    /// How many records the cache holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the cache holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once the first list is complete.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.inner.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }
}

/// A record keyed by its name: hashes and compares as its name, and is found by it.
struct ByName<R>(Arc<R>);

impl<R: Named> std::hash::Hash for ByName<R> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.name().hash(state);
    }
}

impl<R: Named> PartialEq for ByName<R> {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
    }
}

impl<R: Named> Eq for ByName<R> {}

impl<R: Named> Borrow<str> for ByName<R> {
    fn borrow(&self) -> &str {
        self.0.name()
    }
}

/// Starts a watch of `api` into a [`Cache`] of the records `convert` makes of its
/// objects; every change (and every error, after which the watch retries with
/// [`WatchBackoff`] while the cache keeps its content) wakes `notify`.
///
/// With `first_list`, each record of the *first* list is also sent there as its page
/// arrives (the cache itself shows the list only once it is complete). The sender is
/// dropped when that list is complete, which ends the receiver's stream; later
/// re-lists (after a watch error) are not sent. The channel is bounded and never
/// waited on: when its reader falls behind and it fills, the sender is dropped there
/// and then (the reader gets what is queued, then the end), so a slow reader costs at
/// most the channel's capacity in memory and never holds up the cache.
pub fn spawn_cache<K, R>(
    api: Api<K>,
    notify: Arc<Notify>,
    convert: impl Fn(K) -> R + Send + 'static,
    mut first_list: Option<Sender<Arc<R>>>,
) -> Cache<R>
where
    K: Watched + Resource<Scope = ClusterResourceScope>,
    R: Named,
{
    let cache = Cache::new();
    let mut writer = CacheWriter {
        cache: cache.clone(),
        convert,
        relist: None,
    };
    let kind = K::kind(&()).into_owned();
    drive(
        api,
        notify,
        |_: &mut K| {},
        move |ev| {
            let done = matches!(ev, watcher::Event::InitDone);
            if let Some(record) = writer.apply(ev)
                && let Some(tx) = &first_list
            {
                match tx.try_send(record) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        debug!(%kind, "the first list's reader fell behind; the complete list takes over");
                        first_list = None;
                    }
                    Err(TrySendError::Closed(_)) => first_list = None,
                }
            }
            if done {
                first_list = None;
            }
        },
    );
    cache
}

/// Applies watch events to a [`Cache`].
struct CacheWriter<R, F> {
    cache: Cache<R>,
    convert: F,
    /// A list's records, collected apart until it is complete.
    relist: Option<HashSet<ByName<R>>>,
}

impl<R: Named, F> CacheWriter<R, F> {
    /// Applies one event; returns the record a list's object became (`InitApply`).
    fn apply<K: Resource>(&mut self, ev: watcher::Event<K>) -> Option<Arc<R>>
    where
        F: Fn(K) -> R,
    {
        match ev {
            watcher::Event::Apply(obj) => {
                let record = ByName(Arc::new((self.convert)(obj)));
                self.cache.write().replace(record);
                self.cache.changed();
            }
            watcher::Event::Delete(obj) => {
                if let Some(name) = obj.meta().name.as_deref() {
                    let gone = self.cache.write().take(name);
                    self.cache.changed();
                    drop(gone);
                }
            }
            watcher::Event::Init => self.relist = Some(HashSet::new()),
            watcher::Event::InitApply(obj) => {
                let record = Arc::new((self.convert)(obj));
                self.relist
                    .get_or_insert_with(HashSet::new)
                    .replace(ByName(Arc::clone(&record)));
                return Some(record);
            }
            watcher::Event::InitDone => {
                let complete = self.relist.take().unwrap_or_default();
                // The old content is dropped after the lock is released.
                let old = std::mem::replace(&mut *self.cache.write(), complete);
                self.cache.changed();
                drop(old);
                self.cache.inner.ready.send_replace(true);
            }
        }
        None
    }
}

/// Runs a watch of `api`: each object trimmed by `modify`, each event handed to
/// `apply`, `notify` woken after each event and each error.
fn drive<K>(
    api: Api<K>,
    notify: Arc<Notify>,
    modify: impl FnMut(&mut K) + Send + 'static,
    mut apply: impl FnMut(watcher::Event<K>) + Send + 'static,
) where
    K: Watched,
{
    let events = watcher(
        api,
        watcher::Config::default().timeout(crate::WATCH_TIMEOUT_SECS),
    )
    .backoff(WatchBackoff::default())
    .modify(modify);
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
                    apply(ev);
                }
            }
            notify.notify_one();
        }
    });
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

    use k8s_openapi::api::core::v1::Node;

    #[derive(Debug, PartialEq)]
    struct Rec {
        name: String,
        zone: Option<String>,
    }

    impl Named for Rec {
        fn name(&self) -> &str {
            &self.name
        }
    }

    fn node(name: &str, zone: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some([("zone".to_string(), zone.to_string())].into());
        n
    }

    fn names(c: &Cache<Rec>) -> Vec<String> {
        let mut v: Vec<String> = c.state().iter().map(|r| r.name.clone()).collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_cache_shows_a_list_once_complete_and_follows_changes() {
        let cache = Cache::new();
        let mut w = CacheWriter {
            cache: cache.clone(),
            convert: |n: Node| Rec {
                name: n.metadata.name.unwrap_or_default(),
                zone: n.metadata.labels.and_then(|l| l.get("zone").cloned()),
            },
            relist: None,
        };
        assert!(w.apply(watcher::Event::<Node>::Init).is_none());
        let sent = w.apply(watcher::Event::InitApply(node("a", "1")));
        assert_eq!(sent.map(|r| r.name.clone()).as_deref(), Some("a"));
        w.apply(watcher::Event::InitApply(node("b", "1")));
        // Not complete: nothing shows, and readers wait.
        assert!(cache.is_empty());
        assert!(
            tokio::time::timeout(Duration::from_millis(20), cache.wait_until_ready())
                .await
                .is_err()
        );
        w.apply(watcher::Event::<Node>::InitDone);
        cache.wait_until_ready().await;
        assert_eq!(names(&cache), ["a", "b"]);
        // A change replaces the record, a delete removes it; each changes the version.
        let v = cache.version();
        w.apply(watcher::Event::Apply(node("a", "2")));
        assert_ne!(cache.version(), v);
        assert_eq!(
            cache.get("a").and_then(|r| r.zone.clone()).as_deref(),
            Some("2")
        );
        assert_eq!(cache.len(), 2);
        w.apply(watcher::Event::Delete(node("b", "1")));
        assert_eq!(names(&cache), ["a"]);
        assert!(cache.get("b").is_none());
        // A re-list is collected apart: the old content serves until it is complete,
        // then the new one replaces it whole (what the re-list lacks is gone).
        w.apply(watcher::Event::<Node>::Init);
        w.apply(watcher::Event::InitApply(node("c", "3")));
        assert_eq!(names(&cache), ["a"]);
        w.apply(watcher::Event::<Node>::InitDone);
        assert_eq!(names(&cache), ["c"]);
    }

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
