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

/// How long the API server keeps one watch request open (`timeoutSeconds`) before berth's
/// watches open the next one from where they were. Below the controllers' client read timeout
/// (`READ_TIMEOUT` of `berth operator`): a watch of a kind that never had an event since the
/// API server started (no Jobs in the cluster, say) receives no bookmark either, so a quiet
/// watch must end cleanly before the client gives up on its silent connection, which would
/// count as a failure, re-list and wake the CRD check.
pub const WATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(100);

/// The watcher configuration every berth watch starts from: [`WATCH_TIMEOUT`].
pub fn watch_config() -> kube::runtime::watcher::Config {
    kube::runtime::watcher::Config::default().timeout(WATCH_TIMEOUT.as_secs() as u32)
}

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
    MainWatch::new(api, config).into_stream(synced)
}

/// A controller's main watch whose cache other controllers share: the operator keeps each
/// AppStack, Worker and Backup once, not once per controller that reads it. The controller
/// that owns the kind drives the watch ([`MainWatch::into_stream`]); the others read its
/// [`MainWatch::store`] and take its changes from [`MainWatch::subscribe`].
pub struct MainWatch<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    api: kube::Api<K>,
    config: kube::runtime::watcher::Config,
    reader: kube::runtime::reflector::Store<K>,
    writer: kube::runtime::reflector::store::Writer<K>,
    feed: Feed<K>,
    prepare: fn(&mut K),
}

impl<K> MainWatch<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    pub fn new(api: kube::Api<K>, config: kube::runtime::watcher::Config) -> Self {
        let (reader, writer) = kube::runtime::reflector::store();
        MainWatch {
            api,
            config,
            reader,
            writer,
            feed: Feed::default(),
            prepare: super::trim::lean::<K>,
        }
    }

    /// What each object becomes before the cache instead of [`super::trim::lean`] (which
    /// `prepare` should include): [`super::trim::lean_generated`] for the kinds an AppStack
    /// generates.
    pub fn prepared_by(mut self, prepare: fn(&mut K)) -> Self {
        self.prepare = prepare;
        self
    }

    /// The shared cache (filled once the owning controller runs [`Self::into_stream`]).
    pub fn store(&self) -> kube::runtime::reflector::Store<K> {
        self.reader.clone()
    }

    /// Every object the watch applies or deletes, from the cache where it is there (no copy);
    /// after each complete list, every cached object. Subscribe before the watch runs.
    pub fn subscribe(&self) -> impl futures::Stream<Item = std::sync::Arc<K>> + Send + 'static {
        self.feed.subscribe()
    }

    /// The watch stream for the owning controller's `Controller::for_stream`, and its cache.
    /// managedFields and kubectl's last-applied annotation are dropped before the cache, as
    /// for every other watch: berth never reads them, and on an object applied by kubectl
    /// they are a large part of it.
    pub fn into_stream(
        self,
        synced: Synced,
    ) -> (
        impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send + 'static,
        kube::runtime::reflector::Store<K>,
    ) {
        use futures::StreamExt;
        use kube::runtime::watcher::Event;
        use kube::runtime::WatchStreamExt;
        let MainWatch {
            api,
            config,
            reader,
            writer,
            feed,
            prepare,
        } = self;
        let cache = reader.clone();
        let stream = kube::runtime::watcher(api, config)
            .modify(prepare)
            .reflect(writer)
            .inspect(move |e| {
                match e {
                    Ok(Event::InitDone) => synced.set(),
                    Err(_) => WATCH_TROUBLE.notify_one(),
                    Ok(_) => {}
                }
                if let Ok(e) = e {
                    feed.dispatch(&cache, e);
                }
            })
            .applied_objects();
        (stream, reader)
    }
}

/// Fan-out of a shared watch's objects to the controllers that subscribed (unbounded: each
/// subscriber only maps an object to the reconciles it triggers).
struct Feed<K> {
    subscribers: std::sync::Mutex<Vec<futures::channel::mpsc::UnboundedSender<std::sync::Arc<K>>>>,
}

impl<K> Default for Feed<K> {
    fn default() -> Self {
        Feed {
            subscribers: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl<K> Feed<K> {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<futures::channel::mpsc::UnboundedSender<std::sync::Arc<K>>>>
    {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscribe(&self) -> futures::channel::mpsc::UnboundedReceiver<std::sync::Arc<K>> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        self.lock().push(tx);
        rx
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Passes a watch event, once the cache holds it, to the subscribers: an applied object
    /// as cached (no copy), a deleted one, and after a complete list every cached object.
    fn dispatch(
        &self,
        cache: &kube::runtime::reflector::Store<K>,
        e: &kube::runtime::watcher::Event<K>,
    ) where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        use kube::runtime::watcher::Event;
        if self.is_empty() {
            return;
        }
        match e {
            Event::Apply(o) => self.send(
                cache
                    .get(&kube::runtime::reflector::ObjectRef::from_obj(o))
                    .unwrap_or_else(|| std::sync::Arc::new(o.clone())),
            ),
            Event::Delete(o) => self.send(std::sync::Arc::new(o.clone())),
            Event::InitDone => cache.state().into_iter().for_each(|o| self.send(o)),
            Event::Init | Event::InitApply(_) => {}
        }
    }

    /// Sends to every subscriber still listening; forgets those gone.
    fn send(&self, obj: std::sync::Arc<K>) {
        self.lock()
            .retain(|tx| tx.unbounded_send(obj.clone()).is_ok());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;

    fn cm(name: &str, generation: &str) -> ConfigMap {
        ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(generation.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Every watch of the operator starts from [`watch_config`], so none outlives the client's
    /// read timeout in silence: a watcher configuration made any other way fails this test.
    #[test]
    fn every_watch_ends_before_the_read_timeout() {
        fn scan(dir: &std::path::Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    scan(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("controller/synced.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for (n, line) in text.lines().enumerate() {
                        if line.contains("watcher::Config::default()")
                            || line.contains("watcher::Config {")
                        {
                            found.push(format!("{}:{}", path.display(), n + 1));
                        }
                    }
                }
            }
        }
        let mut found = Vec::new();
        scan(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(
            found.is_empty(),
            "watch configs not from watch_config(): {found:?}"
        );
        assert_eq!(watch_config().timeout, Some(WATCH_TIMEOUT.as_secs() as u32));
        assert!(WATCH_TIMEOUT < std::time::Duration::from_secs(120));
    }

    /// What a watch applies reaches every subscriber as the very object in the shared cache
    /// (one copy in memory); deletions and the objects of a complete list reach them too.
    #[test]
    fn subscribers_get_the_cached_objects_deletions_and_each_complete_list() {
        let feed = Feed::<ConfigMap>::default();
        assert!(feed.is_empty());
        let (cache, mut writer) = kube::runtime::reflector::store();
        let mut a = feed.subscribe();
        let mut b = feed.subscribe();
        let mut apply = |e: Event<ConfigMap>| {
            writer.apply_watcher_event(&e);
            feed.dispatch(&cache, &e);
        };
        apply(Event::Init);
        apply(Event::InitApply(cm("one", "1")));
        apply(Event::InitApply(cm("two", "1")));
        apply(Event::InitDone);
        apply(Event::Apply(cm("one", "2")));
        apply(Event::Delete(cm("two", "1")));
        for rx in [&mut a, &mut b] {
            let mut got = Vec::new();
            while let Ok(o) = rx.try_recv() {
                got.push(o);
            }
            let names: Vec<_> = got
                .iter()
                .map(|o| {
                    format!(
                        "{}@{}",
                        o.metadata.name.as_deref().unwrap(),
                        o.metadata.resource_version.as_deref().unwrap()
                    )
                })
                .collect();
            let mut listed = names[..2].to_vec();
            listed.sort();
            assert_eq!(listed, ["one@1", "two@1"], "the complete list, once");
            assert_eq!(names[2..], ["one@2", "two@1"], "an update, then a deletion");
            let cached = cache
                .get(&kube::runtime::reflector::ObjectRef::new("one").within("ns"))
                .unwrap();
            assert!(
                std::sync::Arc::ptr_eq(&got[2], &cached),
                "the subscriber holds the cached object, not a copy"
            );
        }
        // A subscriber gone is forgotten; the others still get every event.
        drop(b);
        let e = Event::Apply(cm("three", "1"));
        feed.dispatch(&cache, &e);
        assert_eq!(feed.lock().len(), 1);
        let got = futures::executor::block_on(a.next()).unwrap();
        assert_eq!(got.metadata.name.as_deref(), Some("three"));
    }
}
