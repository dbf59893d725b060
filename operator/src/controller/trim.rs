//! Children cached without their spec, and whether one already is what berth would apply.
//!
//! A controller reads two things from a cached child: its status (with
//! `metadata.generation`) for the stack's status, and whether it already is what berth would
//! apply. Only the second needs the spec, and the spec is most of an object's memory (a
//! Deployment's pod template with every server default). So the watches keep each child as a
//! compact record ([`super::cache::Record`]) whose [`digest`] stands for everything berth could
//! have set (name, labels, annotations, owner references, spec).
//!
//! The controller remembers, per child, the digest it has seen to contain the desired object
//! ([`Verified`]): from the response of its own apply, or from one `get` of the full object
//! when a digest is new to it (after a restart, or after someone else changed the object).
//! Any change by anyone changes the digest, so drift is still seen; an unchanged child costs
//! no request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use std::fmt::Debug;

use k8s_openapi::api::batch::v1::Job;
use kube::core::DeserializeGuard;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::cache::{Cache, Record};
use super::child::{digest, digest_value, Kept};
use super::diff;
use crate::k8s::meta::STACK_LABEL;

/// kubectl's client-side apply record: the whole object again, as a string.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What every watch drops before its cache: managedFields and kubectl's last-applied
/// annotation (berth reads neither; on an AppStack applied with kubectl they are about as
/// large as its spec and status together).
pub fn lean<K: Resource>(o: &mut K) {
    // `None`, not an emptied Vec, which would keep its allocation.
    o.meta_mut().managed_fields = None;
    if let Some(a) = o.meta_mut().annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            o.meta_mut().annotations = None;
        }
    }
}

/// [`lean`], and the status dropped: the Worker and Backup controllers' caches of AppStacks,
/// which read a stack's spec (its Redis, its PostgreSQL) and never its status.
pub fn lean_stack(s: &mut kube::core::DeserializeGuard<crate::api::AppStack>) {
    lean(s);
    if let Ok(stack) = &mut s.0 {
        stack.status = None;
    }
}

/// The annotation a generated Worker, Certificate or Backup is cached with instead of its
/// labels ([`lean_generated`]): `<digest>/<stack>`.
pub const CACHED_ANNOTATION: &str = "berth.dev/cached";

/// [`lean`], and for a Worker, Certificate or Backup an AppStack generated (labelled with its
/// stack), the labels dropped and one annotation added in their place ([`CACHED_ANNOTATION`]):
/// the digest of the object as served ([`digest`]: name, labels, annotations, owner
/// references, spec) and the stack's name.
///
/// berth's controllers read no label of these objects but the stack's (which stack owns
/// it); the AppStack controller compares the object with what it would apply by this digest,
/// as it does its other children ([`is_current`]), not by the labels themselves. The labels
/// were about a quarter of each object's memory (eight labels in their own map: 0.8 of
/// 3.6 KB for a Worker; `make bench-plan`). An object that is not an AppStack's, or does not
/// parse, is only made [`lean`].
pub fn lean_generated<K>(o: &mut DeserializeGuard<K>)
where
    K: Resource + Serialize,
{
    let generated = o.0.as_ref().ok().filter(|k| {
        k.meta()
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(STACK_LABEL))
    });
    // The digest of the object as the API server sent it, as for children and the
    // responses to berth's own applies (`apply`), which it is compared with.
    let digest = generated.map(digest).filter(|d| !d.is_empty());
    lean(o);
    let (Some(digest), Ok(k)) = (digest, o.0.as_mut()) else {
        return;
    };
    let meta = k.meta_mut();
    let stack = meta
        .labels
        .take()
        .and_then(|mut l| l.remove(STACK_LABEL))
        .unwrap_or_default();
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CACHED_ANNOTATION.to_string(), format!("{digest}/{stack}"));
}

/// The digest and stack a generated object was cached with ([`lean_generated`]).
fn cached<K: Resource>(k: &K) -> Option<(&str, &str)> {
    k.meta()
        .annotations
        .as_ref()?
        .get(CACHED_ANNOTATION)?
        .split_once('/')
}

/// The digest a generated object was cached with ([`lean_generated`]).
pub fn cached_digest<K: Resource>(k: &K) -> Option<&str> {
    cached(k).map(|(digest, _)| digest)
}

/// The stack an object is labelled with ([`STACK_LABEL`]), also when it was cached without
/// its labels ([`lean_generated`]).
pub fn stack_of<K: Resource>(k: &K) -> Option<&str> {
    match k.meta().labels.as_ref().and_then(|l| l.get(STACK_LABEL)) {
        Some(s) => Some(s),
        None => cached(k).map(|(_, stack)| stack),
    }
}

/// [`lean`], and the spec dropped: Jobs, of which the Backup controller reads
/// only metadata (name, labels, creation time) and status.
pub fn lean_job(j: &mut Job) {
    lean(j);
    j.spec = None;
}

/// Whether the child cached as [`Record`] with `digest` already is what berth would apply:
/// `desired`, stamped with its applied hash `hash` (`diff::stamp`). It is when its digest
/// was seen holding `hash` ([`Verified`], under `key`); a digest new to this process (a
/// restart, or someone else's change) costs one `get` of the whole object, remembered.
pub async fn is_current<K>(
    api: &Api<K>,
    name: &str,
    verified: &Verified,
    key: &str,
    digest: &str,
    desired: &Value,
    hash: &str,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    // A digest seen before: the object is unchanged since, and holds what it held then.
    if let Some(held) = verified.held(key, digest) {
        return Ok(held == hash);
    }
    match api.get_opt(name).await? {
        Some(full) => match serde_json::to_value(&full) {
            Ok(f) if diff::up_to_date(desired, &f) => {
                verified.record(key.to_string(), digest_value(&f), hash.to_string());
                Ok(true)
            }
            _ => Ok(false),
        },
        None => Ok(false),
    }
}

/// What [`apply_if_changed`] found or did.
pub enum Applied<K: Kept> {
    /// The cached child already was the desired object: nothing sent.
    Current(Arc<Record<K>>),
    /// The desired object was applied: the API server's answer.
    Written(K),
}

impl<K: Kept> Applied<K> {
    /// The child as it now is (the cached record when nothing was sent).
    pub fn into_record(self) -> Arc<Record<K>> {
        match self {
            Applied::Current(r) => r,
            Applied::Written(o) => Arc::new(Record::of_object(o)),
        }
    }
}

/// Server-side applies (field manager `berth`, forced) `desired` unless the child cached in
/// `cache` already is it ([`is_current`]); the applied object's digest is remembered in
/// `verified`, so its own watch event costs no read.
pub async fn apply_if_changed<K>(
    api: &Api<K>,
    cache: &Cache<K>,
    verified: &Verified,
    ns: &str,
    name: &str,
    mut desired: Value,
) -> Result<Applied<K>, kube::Error>
where
    K: Kept + Resource<DynamicType = ()>,
{
    let hash = diff::stamp(&mut desired);
    let key = Verified::key(&K::kind(&()), ns, name);
    if let Some(c) = cache.get(ns, name) {
        let seen = c.digest.to_string();
        if is_current(api, name, verified, &key, &seen, &desired, &hash).await? {
            return Ok(Applied::Current(c));
        }
    }
    let applied = api
        .patch(
            name,
            &kube::api::PatchParams::apply(crate::k8s::meta::MANAGER).force(),
            &kube::api::Patch::Apply(&desired),
        )
        .await?;
    verified.record(key, digest(&applied), hash);
    Ok(Applied::Written(applied))
}

/// Which digest of each child (`Kind/namespace/name`) was seen to contain which desired
/// object (its applied hash). Both are 16 hex digits ([`diff::hash`]), kept as the 64-bit
/// numbers they write (one entry per child of every stack: at 1,000 stacks, 18,000 entries).
#[derive(Default)]
pub struct Verified {
    seen: Mutex<HashMap<Box<str>, (u64, u64)>>,
}

/// A digest or hash as its number (`None`: not one berth computed, which matches nothing).
fn number(hex: &str) -> Option<u64> {
    if hex.len() == 16 {
        u64::from_str_radix(hex, 16).ok()
    } else {
        None
    }
}

impl Verified {
    pub fn key(kind: &str, ns: &str, name: &str) -> String {
        format!("{kind}/{ns}/{name}")
    }

    /// True when `digest` of this child was seen to contain the desired object `hash`.
    pub fn holds(&self, key: &str, digest: &str, hash: &str) -> bool {
        self.held(key, digest).is_some_and(|h| h == hash)
    }

    /// The desired object (its hash) that this `digest` of the child was seen to contain;
    /// `None` for a digest not seen (a restart, or a change by anyone since).
    pub fn held(&self, key: &str, digest: &str) -> Option<String> {
        let digest = number(digest)?;
        self.lock()
            .get(key)
            .filter(|(d, _)| *d == digest)
            .map(|(_, h)| format!("{h:016x}"))
    }

    pub fn record(&self, key: String, digest: String, hash: String) {
        match (number(&digest), number(&hash)) {
            (Some(d), Some(h)) => {
                self.lock().insert(key.into_boxed_str(), (d, h));
            }
            // Nothing that could match later: whatever was known of the child is stale.
            _ => self.forget(&key),
        }
    }

    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Forgets every child for which `present` says no (deleted objects).
    pub fn retain(&self, mut present: impl FnMut(&str) -> bool) {
        self.lock().retain(|k, _| present(k));
    }

    /// Forgets every object of a one-kind memo that `cache` no longer holds (deleted).
    pub fn retain_cached<K: Kept>(&self, cache: &Cache<K>) {
        self.retain(|key| {
            let mut parts = key.splitn(3, '/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(_), Some(ns), Some(name)) => cache.get(ns, name).is_some(),
                _ => false,
            }
        });
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, (u64, u64)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    fn deployment(replicas: i32) -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "api", "namespace": "shop", "uid": "u1", "resourceVersion": "5",
                "generation": 3,
                "labels": {"berth.dev/stack": "shop"},
                "annotations": {"berth.dev/applied-hash": "abc", "deployment.kubernetes.io/revision": "2"},
                "managedFields": [{"manager": "berth"}],
                "ownerReferences": [{"apiVersion": "berth.dev/v1alpha1", "kind": "AppStack", "name": "shop", "uid": "s1", "controller": true}]
            },
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"spec": {"containers": [{"name": "api", "image": "i:1"}]}}},
            "status": {"readyReplicas": 1, "observedGeneration": 3}
        }))
        .unwrap()
    }

    #[test]
    fn the_digest_sees_spec_labels_and_annotations_but_not_status_or_server_metadata() {
        let base = digest(&deployment(2));
        assert_ne!(digest(&deployment(3)), base, "spec change");
        let mut d = deployment(2);
        d.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        assert_ne!(digest(&d), base, "label change");
        let mut d = deployment(2);
        d.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        assert_ne!(digest(&d), base, "annotation change");
        let mut d = deployment(2);
        d.metadata.resource_version = Some("9".into());
        d.metadata.generation = Some(4);
        d.status.as_mut().unwrap().ready_replicas = Some(2);
        assert_eq!(digest(&d), base, "status and server metadata do not count");
        // The digest of the full object is what its cached record carries.
        assert_eq!(super::super::child::Child::of(deployment(2)).digest, base);
    }

    #[test]
    fn lean_drops_managed_fields_and_the_last_applied_annotation_only() {
        let mut d = deployment(2);
        d.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(LAST_APPLIED.into(), "{...}".into());
        lean(&mut d);
        assert!(d.metadata.managed_fields.is_none());
        let a = d.metadata.annotations.as_ref().unwrap();
        assert!(!a.contains_key(LAST_APPLIED));
        assert_eq!(a["berth.dev/applied-hash"], "abc");
        assert!(d.spec.is_some());
        let mut bare = deployment(2);
        bare.metadata.annotations = Some([(LAST_APPLIED.to_string(), "x".to_string())].into());
        lean(&mut bare);
        assert!(bare.metadata.annotations.is_none());
    }

    fn worker(labels: serde_json::Value) -> DeserializeGuard<crate::api::Worker> {
        DeserializeGuard(Ok(serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Worker",
            "metadata": {
                "name": "shop-jobs", "namespace": "shop", "uid": "u2", "resourceVersion": "8",
                "labels": labels,
                "annotations": {"berth.dev/applied-hash": "abc", "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "managedFields": [{"manager": "berth"}],
                "ownerReferences": [{"apiVersion": "berth.dev/v1alpha1", "kind": "AppStack", "name": "shop", "uid": "s1", "controller": true}]
            },
            "spec": {"image": "jobs:1", "appStackRef": "shop", "queue": {"type": "bullmq", "name": "q"}},
            "status": {"replicas": 1}
        }))
        .unwrap()))
    }

    #[test]
    fn generated_kinds_are_cached_without_labels_with_the_digest_of_the_object_as_served() {
        let labels = json!({
            "berth.dev/stack": "shop", "app.kubernetes.io/part-of": "berth",
            "app.kubernetes.io/managed-by": "berth", "berth.dev/component": "shop-jobs"
        });
        let served = worker(labels.clone());
        let as_served = digest(served.0.as_ref().unwrap());
        let mut w = worker(labels);
        lean_generated(&mut w);
        let k = w.0.as_ref().unwrap();
        assert_eq!(k.metadata.labels, None);
        assert_eq!(cached_digest(k), Some(as_served.as_str()));
        assert_eq!(stack_of(k), Some("shop"));
        // Made lean too; the other annotations and the rest are kept.
        assert!(k.metadata.managed_fields.is_none());
        let a = k.metadata.annotations.as_ref().unwrap();
        assert!(!a.contains_key(LAST_APPLIED));
        assert_eq!(a["berth.dev/applied-hash"], "abc");
        assert_eq!(k.spec.image, "jobs:1");
        assert!(k.status.is_some());
        // Any label changes the digest.
        let mut other = worker(json!({"berth.dev/stack": "shop"}));
        lean_generated(&mut other);
        assert_ne!(
            cached_digest(other.0.as_ref().unwrap()),
            Some(as_served.as_str())
        );

        // A Worker no AppStack generated keeps its labels (only made lean).
        let mut own = worker(json!({"team": "video"}));
        lean_generated(&mut own);
        let k = own.0.as_ref().unwrap();
        assert_eq!(k.metadata.labels.as_ref().unwrap()["team"], "video");
        assert_eq!((cached_digest(k), stack_of(k)), (None, None));
        assert!(k.metadata.managed_fields.is_none());
        // Labelled with a stack and not cached by digest: the label tells.
        let mut d = deployment(2);
        lean(&mut d);
        assert_eq!(stack_of(&d), Some("shop"));
    }

    #[test]
    fn jobs_are_kept_with_metadata_and_status_only() {
        let mut j: Job = serde_json::from_value(json!({
            "metadata": {"name": "b-1", "namespace": "shop", "labels": {"berth.dev/backup": "b"},
                         "creationTimestamp": "2026-12-02T10:00:00Z",
                         "managedFields": [{"manager": "berth"}]},
            "spec": {"template": {"spec": {"containers": [{"name": "dump", "image": "berth:1"}]}}},
            "status": {"succeeded": 1}
        }))
        .unwrap();
        lean_job(&mut j);
        assert!(j.spec.is_none());
        assert!(j.metadata.managed_fields.is_none());
        assert_eq!(j.status.as_ref().unwrap().succeeded, Some(1));
        assert_eq!(j.metadata.labels.as_ref().unwrap()["berth.dev/backup"], "b");
        assert!(j.metadata.creation_timestamp.is_some());
    }

    #[test]
    fn verified_digests_are_per_child_digest_and_hash() {
        let v = Verified::default();
        let k = Verified::key("Deployment", "shop", "api");
        let (d1, d2) = ("00000000000000d1", "00000000000000d2");
        let (h1, h2) = (
            "000a000000000001".to_string(),
            "ffffffffffffff02".to_string(),
        );
        assert!(!v.holds(&k, d1, &h1));
        v.record(k.clone(), d1.into(), h1.clone());
        assert!(v.holds(&k, d1, &h1));
        assert!(!v.holds(&k, d2, &h1), "the object changed");
        assert!(!v.holds(&k, d1, &h2), "berth wants something else");
        // The hash comes back as written, leading zeros and all.
        assert_eq!(v.held(&k, d1), Some(h1.clone()));
        assert_eq!(v.held(&k, d2), None, "a digest not seen");
        // A digest berth did not compute (an object that would not serialize) matches
        // nothing, and replaces what was known.
        v.record(k.clone(), String::new(), h1.clone());
        assert_eq!(v.held(&k, d1), None);
        assert_eq!(v.held(&k, ""), None);
        v.record(k.clone(), d1.into(), h1.clone());
        v.retain(|key| key != k);
        assert!(v.is_empty());
    }

    #[test]
    fn verified_holds_the_hashes_berth_computes() {
        let d = digest(&deployment(2));
        let mut desired = serde_json::to_value(deployment(2)).unwrap();
        let hash = diff::stamp(&mut desired);
        let v = Verified::default();
        v.record("k".into(), d.clone(), hash.clone());
        assert!(v.holds("k", &d, &hash), "{d} {hash}");
    }
}
