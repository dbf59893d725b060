//! A flag a controller raises once its caches hold a first complete list, for /readyz.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
pub struct Synced(Arc<AtomicBool>);

impl Synced {
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Raised when the watch of a controller's main kind fails (a berth CRD deleted under it, the
/// API server gone): the CRD check runs again at once instead of on its next period.
pub static WATCH_TROUBLE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Waits until `store` holds a first complete list; `false` when its writer is gone.
///
/// Only for stores nobody else waits on: a store's readiness wakes only the last of several
/// waiters. Polls again every 200 ms.
pub async fn store_ready<K>(store: &kube::runtime::reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(
            std::time::Duration::from_millis(200),
            store.wait_until_ready(),
        )
        .await
        {
            Ok(r) => return r.is_ok(),
            Err(_) => continue,
        }
    }
}

/// The watch of a controller's main kind, for `Controller::for_stream`, with its cache: like
/// `Controller::new`, and raising `synced` when the first complete list is in the cache.
/// (Waiting on the store instead would race with the controller, which waits on it too.)
pub fn main_watch<K>(
    api: kube::Api<K>,
    config: kube::runtime::watcher::Config,
    synced: Synced,
) -> (
    impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send + 'static,
    kube::runtime::reflector::Store<K>,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    let (reader, writer) = kube::runtime::reflector::store();
    // managedFields and kubectl's last-applied annotation are dropped before the cache, as for
    // every other watch: berth never reads them, and on an object applied by kubectl they are
    // a large part of it.
    let stream = kube::runtime::watcher(api, config)
        .modify(super::trim::lean::<K>)
        .reflect(writer)
        .inspect(move |e| match e {
            Ok(kube::runtime::watcher::Event::InitDone) => synced.set(),
            Err(_) => WATCH_TROUBLE.notify_one(),
            Ok(_) => {}
        })
        .applied_objects();
    (stream, reader)
}

/// How many objects one controller reconciles at a time. Unbounded (kube's default), a start
/// with 1,000 AppStacks ran 1,000 reconciles at once: every plan, desired object and response
/// in memory together, and a burst the API server answered with 504s.
pub const MAX_CONCURRENT_RECONCILES: u16 = 8;

/// The run settings of berth's controllers: bounded concurrency, and `debounce` to merge a
/// burst of events for one object (a new stack's children appearing one by one) into one
/// reconcile.
pub fn controller_config(debounce: std::time::Duration) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default()
        .concurrency(MAX_CONCURRENT_RECONCILES)
        .debounce(debounce)
}
