//! The controllers' caches of their children: one [`Record`] per object, in a [`Cache`] of
//! berth's own instead of kube's reflector `Store`.
//!
//! kube's `Store<K>` keeps each object as an `Arc<K>` under an `ObjectRef<K>` key, and both
//! copy the object's identity: the key holds name, namespace, uid and resourceVersion again as
//! four more strings. For a child the controller reads a handful of fields, that identity
//! and the `ObjectMeta` that must travel with a `Resource` (about 330 bytes inline) were most
//! of its cost. A [`Record`] keeps only what is read: uid, generation, the controller owner's
//! uid, the stack label, the digest, `spec.replicas` and the compact status of its kind. The
//! namespace is stored once per namespace and the name once per object (it is the set's key).
//!
//! The watch events still carry a [`Child`] (kube's watcher reads each event object's
//! resourceVersion, and `Controller::owns_stream` its ownerReferences); the cache turns each
//! into a [`Record`] as it passes.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use kube::runtime::watcher;

use super::child::{Child, Kept};

/// What a controller keeps of a child.
#[derive(Debug)]
pub struct Record<K: Kept> {
    pub name: Box<str>,
    pub uid: Option<Uid>,
    pub generation: Option<i64>,
    /// The uid of the controller ownerReference.
    pub owner: Option<Uid>,
    /// The `berth.dev/stack` label.
    pub stack: Option<Box<str>>,
    /// [`super::child::digest`] of the full object.
    pub digest: Digest,
    /// `spec.replicas` (Deployments).
    pub replicas: Option<i32>,
    pub status: Option<K::Status>,
}

impl<K: Kept> Record<K> {
    pub fn of(c: &Child<K>) -> Record<K> {
        let m = &c.metadata;
        Record {
            name: m.name.as_deref().unwrap_or_default().into(),
            uid: m.uid.as_deref().map(Uid::new),
            generation: m.generation,
            owner: m
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .map(|r| Uid::new(&r.uid)),
            stack: c.stack.as_deref().map(Into::into),
            digest: Digest::of(&c.digest),
            replicas: c.replicas,
            status: c.status.clone(),
        }
    }

    /// The record of a full object (an apply's response).
    pub fn of_object(obj: K) -> Record<K> {
        Record::of(&Child::of(obj))
    }
}

/// A uid as the API server writes them (a lowercase UUID), kept as its 128 bits instead of a
/// 36-byte string on the heap (two per record: the child's and its owner's); any other
/// string as it is. Displays as the string it was made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uid {
    Uuid(u64, u64),
    Other(Box<str>),
}

impl Uid {
    pub fn new(s: &str) -> Uid {
        match uuid(s) {
            Some(n) => Uid::Uuid((n >> 64) as u64, n as u64),
            None => Uid::Other(s.into()),
        }
    }

    /// Whether this is the uid written `s` (the same string).
    pub fn is(&self, s: &str) -> bool {
        match self {
            Uid::Uuid(hi, lo) => uuid(s) == Some(u128::from(*hi) << 64 | u128::from(*lo)),
            Uid::Other(o) => **o == *s,
        }
    }
}

/// The 128 bits of a UUID in its canonical lowercase form (`8-4-4-4-12` hex digits); `None`
/// for any other string, so that [`Uid`] gives back exactly the string it was made from.
fn uuid(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut n: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        n = n << 4 | u128::from(d);
    }
    Some(n)
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uid::Uuid(hi, lo) => write!(
                f,
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                hi >> 32,
                (hi >> 16) & 0xffff,
                hi & 0xffff,
                lo >> 48,
                lo & 0xffff_ffff_ffff
            ),
            Uid::Other(s) => f.write_str(s),
        }
    }
}

/// A child's digest ([`super::child::digest`], 16 lowercase hex digits) as the 64-bit number
/// it writes, instead of a string on the heap; anything else (the empty digest of an object
/// that did not serialize) is `None` and displays as the empty string, which matches nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest(Option<u64>);

impl Digest {
    pub fn of(hex: &str) -> Digest {
        let canonical =
            hex.len() == 16 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        Digest(if canonical {
            u64::from_str_radix(hex, 16).ok()
        } else {
            None
        })
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n:016x}"),
            None => Ok(()),
        }
    }
}

/// A record in its namespace's set, found by name.
struct Entry<K: Kept>(Arc<Record<K>>);

impl<K: Kept> Borrow<str> for Entry<K> {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

impl<K: Kept> Hash for Entry<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes: lookups by `&str` find it.
        (*self.0.name).hash(state)
    }
}

impl<K: Kept> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl<K: Kept> Eq for Entry<K> {}

/// Records by namespace, then by name.
type Spaces<K> = HashMap<Arc<str>, HashSet<Entry<K>>>;

struct State<K: Kept> {
    live: Spaces<K>,
    /// A list in progress (`Init` .. `InitDone`): it replaces `live` when complete.
    relist: Option<Spaces<K>>,
}

struct Shared<K: Kept> {
    state: RwLock<State<K>>,
    ready: tokio::sync::watch::Sender<bool>,
}

/// A cache of one child kind, filled from its watch ([`Cache::apply_watcher_event`]). Clones
/// share it.
pub struct Cache<K: Kept>(Arc<Shared<K>>);

impl<K: Kept> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Cache(self.0.clone())
    }
}

impl<K: Kept> Default for Cache<K> {
    fn default() -> Self {
        Cache(Arc::new(Shared {
            state: RwLock::new(State {
                live: HashMap::new(),
                relist: None,
            }),
            ready: tokio::sync::watch::Sender::new(false),
        }))
    }
}

fn insert<K: Kept>(spaces: &mut Spaces<K>, ns: &str, record: Record<K>) {
    let entry = Entry(Arc::new(record));
    match spaces.get_mut(ns) {
        Some(set) => {
            set.replace(entry);
        }
        None => {
            spaces.insert(ns.into(), HashSet::from([entry]));
        }
    }
}

fn remove<K: Kept>(spaces: &mut Spaces<K>, ns: &str, name: &str) {
    if let Some(set) = spaces.get_mut(ns) {
        set.remove(name);
        if set.is_empty() {
            spaces.remove(ns);
        }
    }
}

impl<K: Kept> Cache<K> {
    /// Applies one event of the kind's watch, as kube's reflector does: a restarted list
    /// replaces the contents when it completes, and the first complete list makes the cache
    /// ready.
    pub fn apply_watcher_event(&self, event: &watcher::Event<Child<K>>) {
        let ns = |c: &Child<K>| c.metadata.namespace.clone().unwrap_or_default();
        let mut st = self.write();
        match event {
            watcher::Event::Apply(c) => insert(&mut st.live, &ns(c), Record::of(c)),
            watcher::Event::Delete(c) => remove(
                &mut st.live,
                &ns(c),
                c.metadata.name.as_deref().unwrap_or_default(),
            ),
            watcher::Event::Init => st.relist = Some(HashMap::new()),
            watcher::Event::InitApply(c) => {
                let ns = ns(c);
                insert(
                    st.relist.get_or_insert_with(HashMap::new),
                    &ns,
                    Record::of(c),
                )
            }
            watcher::Event::InitDone => {
                if let Some(listed) = st.relist.take() {
                    st.live = listed;
                }
                drop(st);
                self.0.ready.send_replace(true);
            }
        }
    }

    /// The record of `ns/name`.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<Record<K>>> {
        let st = self.read();
        st.live
            .get(ns)
            .and_then(|set| set.get(name))
            .map(|e| e.0.clone())
    }

    /// Every record in `ns`.
    pub fn in_namespace(&self, ns: &str) -> Vec<Arc<Record<K>>> {
        let st = self.read();
        st.live
            .get(ns)
            .map(|set| set.iter().map(|e| e.0.clone()).collect())
            .unwrap_or_default()
    }

    /// Every record, with its namespace.
    pub fn all(&self) -> Vec<(Arc<str>, Arc<Record<K>>)> {
        let st = self.read();
        st.live
            .iter()
            .flat_map(|(ns, set)| set.iter().map(|e| (ns.clone(), e.0.clone())))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().live.values().map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first complete list is in.
    pub fn is_ready(&self) -> bool {
        *self.0.ready.borrow()
    }

    /// Waits until the first complete list is in.
    pub async fn ready(&self) {
        let mut rx = self.0.ready.subscribe();
        // The sender lives as long as this cache: `wait_for` cannot fail.
        let _ = rx.wait_for(|r| *r).await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State<K>> {
        self.0.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State<K>> {
        self.0.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    fn child<K: Kept>(kind: &str, ns: &str, name: &str, rv: &str) -> Child<K> {
        let mut v = json!({
            "apiVersion": "v1", "kind": kind,
            "metadata": {
                "name": name, "namespace": ns, "uid": format!("uid-{name}"),
                "resourceVersion": rv, "generation": 2,
                "labels": {"berth.dev/stack": "shop"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "not-controller"},
                    {"apiVersion": "berth.dev/v1alpha1", "kind": "AppStack", "name": "shop", "uid": "s1", "controller": true}
                ]
            }
        });
        if kind == "Deployment" {
            v["apiVersion"] = json!("apps/v1");
            v["spec"] = json!({"replicas": 3, "selector": {}, "template": {}});
            v["status"] = json!({"readyReplicas": 1, "observedGeneration": 2,
            "conditions": [
                {"type": "Available", "status": "True", "message": "fine"},
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}
            ]});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_record_keeps_what_the_controllers_read() {
        let c = child::<Deployment>("Deployment", "shop", "api", "5");
        let r = Record::of(&c);
        assert_eq!(&*r.name, "api");
        assert_eq!(
            r.uid.as_ref().map(ToString::to_string).as_deref(),
            Some("uid-api")
        );
        assert_eq!(r.generation, Some(2));
        assert!(
            r.owner.as_ref().is_some_and(|o| o.is("s1")),
            "the controller owner, not the first"
        );
        assert_eq!(r.stack.as_deref(), Some("shop"));
        assert_eq!(r.digest.to_string(), c.digest);
        assert_eq!(r.replicas, Some(3));
        let st = r.status.unwrap();
        assert_eq!((st.ready_replicas, st.observed_generation), (1, Some(2)));
        assert_eq!(st.stuck.as_deref(), Some("too slow"));
    }

    /// Uids and digests are kept as numbers where they are in the form the API server and
    /// berth write them, and give back exactly the string they were made from.
    #[test]
    fn uids_and_digests_are_kept_as_numbers_and_give_back_their_string() {
        let u = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let uid = Uid::new(u);
        assert!(matches!(uid, Uid::Uuid(..)));
        assert_eq!(uid.to_string(), u);
        assert!(uid.is(u));
        assert!(!uid.is(&u.to_uppercase()), "another string, another uid");
        assert!(!uid.is("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f1"));
        for other in [
            "s1",
            "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0",
            "0f1e2d3c+4b5a-6978-8796-a5b4c3d2e1f0",
            "",
        ] {
            let uid = Uid::new(other);
            assert!(matches!(uid, Uid::Other(_)), "{other}");
            assert_eq!(uid.to_string(), other);
            assert!(uid.is(other) && !uid.is(u));
        }
        assert_eq!(
            Digest::of("00ff00ff00ff00ff").to_string(),
            "00ff00ff00ff00ff"
        );
        assert_eq!(
            Digest::of("00ff00ff00ff00ff"),
            Digest::of("00ff00ff00ff00ff")
        );
        assert_ne!(
            Digest::of("00ff00ff00ff00ff"),
            Digest::of("00ff00ff00ff00fe")
        );
        for other in [
            "",
            "00FF00FF00FF00FF",
            "+0ff00ff00ff00ff",
            "00ff00ff00ff00ff0",
        ] {
            assert_eq!(Digest::of(other).to_string(), "", "{other}");
        }
    }

    #[test]
    fn events_add_replace_and_remove_records_by_namespace_and_name() {
        let cache = Cache::<Service>::default();
        cache.apply_watcher_event(&watcher::Event::Apply(child("Service", "a", "api", "1")));
        cache.apply_watcher_event(&watcher::Event::Apply(child("Service", "b", "api", "2")));
        cache.apply_watcher_event(&watcher::Event::Apply(child("Service", "a", "db", "3")));
        assert_eq!(cache.len(), 3);
        assert!(cache.get("a", "api").is_some() && cache.get("b", "api").is_some());
        assert!(cache.get("c", "api").is_none() && cache.get("a", "redis").is_none());

        // Replaced, not added.
        let mut changed = child::<Service>("Service", "a", "api", "4");
        changed.digest = "00000000000000c4".into();
        cache.apply_watcher_event(&watcher::Event::Apply(changed));
        assert_eq!(cache.len(), 3);
        assert_eq!(
            cache.get("a", "api").unwrap().digest.to_string(),
            "00000000000000c4"
        );

        cache.apply_watcher_event(&watcher::Event::Delete(child("Service", "a", "api", "5")));
        assert!(cache.get("a", "api").is_none());
        assert_eq!(cache.in_namespace("a").len(), 1);
        assert_eq!(cache.all().len(), 2);
    }

    #[tokio::test]
    async fn a_relist_replaces_the_contents_when_complete_and_makes_the_cache_ready() {
        let cache = Cache::<Service>::default();
        assert!(!cache.is_ready());
        cache.apply_watcher_event(&watcher::Event::Init);
        cache.apply_watcher_event(&watcher::Event::InitApply(child(
            "Service", "a", "api", "1",
        )));
        // Not visible before the list is complete.
        assert!(cache.get("a", "api").is_none());
        assert!(!cache.is_ready());
        cache.apply_watcher_event(&watcher::Event::InitDone);
        assert!(cache.get("a", "api").is_some());
        tokio::time::timeout(std::time::Duration::from_secs(5), cache.ready())
            .await
            .expect("ready after the first complete list");

        // A relist that no longer has `api`: gone once it completes, kept until then.
        cache.apply_watcher_event(&watcher::Event::Init);
        cache.apply_watcher_event(&watcher::Event::InitApply(child("Service", "a", "db", "2")));
        assert!(cache.get("a", "api").is_some());
        cache.apply_watcher_event(&watcher::Event::InitDone);
        assert!(cache.get("a", "api").is_none());
        assert!(cache.get("a", "db").is_some());
        assert_eq!(cache.len(), 1);
    }
}
