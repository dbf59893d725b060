//! Children as the controllers' watches deliver them: [`Child`], a compact form of each
//! object instead of the k8s-openapi object, from which the caches keep a smaller
//! [`super::cache::Record`]. The AppStack controller's Deployments, StatefulSets, Services,
//! Ingresses and NetworkPolicies, the Worker controller's Deployments and the Backup
//! controller's CronJobs.
//!
//! A [`Child`] keeps what the watch and the controllers need and nothing else: the object's
//! identity and ownerReferences (`metadata`, with no labels, annotations or managedFields:
//! kube's watcher reads each event's resourceVersion, `Controller::owns_stream` the owner),
//! what the controllers read of the status ([`DeploymentRead`], [`StatefulSetRead`]), the
//! stack label (pruning), and the [`digest`] of everything berth could have set (what
//! [`super::trim`] compares).
//!
//! The watches deserialize each event straight into a [`Child`]: the full object lives only
//! while its digest is computed.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::diff;
use crate::k8s::meta::STACK_LABEL;

/// A child kind cached as a [`Child`].
pub trait Kept:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
    + Send
    + Sync
    + 'static
{
    /// What of the status the controller reads (`()`: nothing).
    type Status: Clone + Debug + Send + Sync + 'static;
    fn take_status(&mut self) -> Option<Self::Status>;
    /// `spec.replicas`, for the kinds that have it.
    fn replicas(&self) -> Option<i32> {
        None
    }
}

impl Kept for Deployment {
    type Status = DeploymentRead;
    fn take_status(&mut self) -> Option<DeploymentRead> {
        self.status.take().map(DeploymentRead::of)
    }
    // The Worker controller reads the replica count the autoscaler or `kubectl scale` set.
    fn replicas(&self) -> Option<i32> {
        self.spec.as_ref().and_then(|s| s.replicas)
    }
}

impl Kept for StatefulSet {
    type Status = StatefulSetRead;
    fn take_status(&mut self) -> Option<StatefulSetRead> {
        self.status.take().map(StatefulSetRead::of)
    }
}

/// What the controllers read of a Deployment's status (its conditions, with their messages,
/// are most of it): the replica counts, `observedGeneration`, and the message of a
/// `Progressing=False` condition (a rollout past its progress deadline).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentRead {
    pub observed_generation: Option<i64>,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    pub updated_replicas: i32,
    /// `Progressing=False`: its message (else its reason).
    pub stuck: Option<Box<str>>,
}

impl DeploymentRead {
    pub fn of(st: DeploymentStatus) -> DeploymentRead {
        let stuck = st
            .conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Progressing" && c.status == "False")
            .map(|c| c.message.or(c.reason).unwrap_or_default().into());
        DeploymentRead {
            observed_generation: st.observed_generation,
            replicas: st.replicas.unwrap_or(0),
            ready_replicas: st.ready_replicas.unwrap_or(0),
            available_replicas: st.available_replicas.unwrap_or(0),
            updated_replicas: st.updated_replicas.unwrap_or(0),
            stuck,
        }
    }
}

/// What the AppStack controller reads of a StatefulSet's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatefulSetRead {
    pub observed_generation: Option<i64>,
    pub ready_replicas: i32,
    pub updated_replicas: i32,
    /// `updateRevision` is set and differs from `currentRevision`: pods of the previous
    /// revision remain.
    pub revision_pending: bool,
}

impl StatefulSetRead {
    pub fn of(st: StatefulSetStatus) -> StatefulSetRead {
        StatefulSetRead {
            observed_generation: st.observed_generation,
            ready_replicas: st.ready_replicas.unwrap_or(0),
            updated_replicas: st.updated_replicas.unwrap_or(0),
            revision_pending: st.update_revision.is_some()
                && st.current_revision != st.update_revision,
        }
    }
}

macro_rules! kept_without_status {
    ($($t:ty),*) => {$(
        impl Kept for $t {
            type Status = ();
            fn take_status(&mut self) -> Option<()> {
                None
            }
        }
    )*};
}
// Services, Ingresses and NetworkPolicies: the AppStack controller reads only whether they
// exist; CronJobs: the Backup controller reads only whether they are as desired.
kept_without_status!(Service, Ingress, NetworkPolicy, CronJob);

/// A cached child: identity metadata, status, stack label and digest.
#[derive(Clone, Debug)]
pub struct Child<K: Kept> {
    /// Name, namespace, uid, resourceVersion, generation, creationTimestamp, ownerReferences.
    /// The resourceVersion must stay: kube's watcher resumes from the one of each event's
    /// object, and takes an object without one for an error and lists again.
    pub metadata: ObjectMeta,
    pub status: Option<K::Status>,
    /// `spec.replicas` (Deployments).
    pub replicas: Option<i32>,
    /// The `berth.dev/stack` label.
    pub stack: Option<String>,
    /// [`digest`] of the full object.
    pub digest: String,
}

impl<K: Kept> Child<K> {
    /// The record of a full object.
    pub fn of(mut obj: K) -> Child<K> {
        let digest = digest(&obj);
        let replicas = obj.replicas();
        let status = obj.take_status();
        let mut metadata = std::mem::take(obj.metadata_mut());
        let stack = metadata
            .labels
            .take()
            .and_then(|mut l| l.remove(STACK_LABEL));
        metadata.annotations = None;
        metadata.managed_fields = None;
        Child {
            metadata,
            status,
            replicas,
            stack,
            digest,
        }
    }
}

impl<'de, K: Kept> Deserialize<'de> for Child<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        K::deserialize(d).map(Child::of)
    }
}

impl<K: Kept> k8s_openapi::Resource for Child<K> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::URL_PATH_SEGMENT;
    type Scope = K::Scope;
}

impl<K: Kept> k8s_openapi::Metadata for Child<K> {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Digest of the fields berth could set on an object: name, namespace, labels, annotations,
/// ownerReferences and every top-level field but `status` (`spec`, `data`, ...).
pub fn digest<K: Serialize>(obj: &K) -> String {
    match serde_json::to_value(obj) {
        Ok(v) => digest_value(&v),
        Err(_) => String::new(),
    }
}

pub(super) fn digest_value(v: &Value) -> String {
    let mut projection = Map::new();
    if let Some(fields) = v.as_object() {
        for (k, val) in fields {
            match k.as_str() {
                "status" | "apiVersion" | "kind" => {}
                "metadata" => {
                    let mut meta = Map::new();
                    for key in ["name", "namespace", "ownerReferences"] {
                        if let Some(x) = val.get(key) {
                            meta.insert(key.into(), x.clone());
                        }
                    }
                    for key in ["labels", "annotations"] {
                        if let Some(a @ Value::Object(_)) = val.get(key) {
                            meta.insert(key.into(), a.clone());
                        }
                    }
                    projection.insert(k.clone(), Value::Object(meta));
                }
                _ => {
                    projection.insert(k.clone(), val.clone());
                }
            }
        }
    }
    diff::hash(&Value::Object(projection))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;
    use serde_json::json;

    fn deployment_json() -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "api", "namespace": "shop", "uid": "u1", "resourceVersion": "5",
                "generation": 3,
                "labels": {"berth.dev/stack": "shop", "app": "api"},
                "annotations": {"berth.dev/applied-hash": "abc"},
                "managedFields": [{"manager": "berth"}],
                "ownerReferences": [{"apiVersion": "berth.dev/v1alpha1", "kind": "AppStack", "name": "shop", "uid": "s1", "controller": true}]
            },
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"spec": {"containers": [{"name": "api", "image": "i:1"}]}}},
            "status": {"readyReplicas": 1, "observedGeneration": 3}
        })
    }

    #[test]
    fn a_child_keeps_identity_owner_status_stack_and_the_full_objects_digest() {
        let full: Deployment = serde_json::from_value(deployment_json()).unwrap();
        let c: Child<Deployment> = serde_json::from_value(deployment_json()).unwrap();
        assert_eq!(c.digest, digest(&full));
        assert_eq!(c.stack.as_deref(), Some("shop"));
        assert_eq!(c.status.as_ref().unwrap().ready_replicas, 1);
        assert_eq!(c.replicas, Some(2));
        assert_eq!(c.metadata.generation, Some(3));
        assert_eq!(c.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(c.metadata.owner_references.as_ref().unwrap().len(), 1);
        // No maps at all: the stack label and the digest stand for them.
        assert_eq!(c.metadata.labels, None);
        assert_eq!(c.metadata.annotations, None);
        assert_eq!(c.metadata.managed_fields, None);
        // kube's watcher reads each event's resourceVersion from the deserialized object:
        // without it every event is a `NoResourceVersion` error and a re-list (seen at 1,000
        // stacks: 3,500 more writes and a 137 MiB peak).
        assert_eq!(c.metadata.resource_version.as_deref(), Some("5"));
        // The API paths are the object's own.
        assert_eq!(Child::<Deployment>::plural(&()), "deployments");
        assert_eq!(Child::<Deployment>::api_version(&()), "apps/v1");
        assert_eq!(Child::<Service>::kind(&()), "Service");
        // Much smaller than the object it stands for, spec dropped or not.
        assert!(
            std::mem::size_of::<Child<Deployment>>() * 3 < std::mem::size_of::<Deployment>(),
            "{} vs {}",
            std::mem::size_of::<Child<Deployment>>(),
            std::mem::size_of::<Deployment>()
        );
    }

    #[test]
    fn a_change_to_spec_labels_or_annotations_changes_the_digest_and_status_does_not() {
        let base: Child<Deployment> = serde_json::from_value(deployment_json()).unwrap();
        for (pointer, value) in [
            ("/spec/replicas", json!(3)),
            ("/metadata/labels/app", json!("web")),
            (
                "/metadata/annotations/berth.dev~1applied-hash",
                json!("def"),
            ),
        ] {
            let mut v = deployment_json();
            *v.pointer_mut(pointer).unwrap() = value;
            let c: Child<Deployment> = serde_json::from_value(v).unwrap();
            assert_ne!(c.digest, base.digest, "{pointer}");
        }
        let mut v = deployment_json();
        v["status"]["readyReplicas"] = json!(2);
        v["metadata"]["resourceVersion"] = json!("6");
        let c: Child<Deployment> = serde_json::from_value(v).unwrap();
        assert_eq!(c.digest, base.digest);
    }
}
