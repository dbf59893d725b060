//! Pure builders: a Worker's Deployment, and whether its status changed beyond the queue depth
//! (the status itself comes from the shared rules of [`crate::status`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{Resource, ResourceExt};

use crate::api::{Worker, WorkerStatus};
use crate::k8s::meta::{Owner, STACK_LABEL};
use crate::k8s::workload;
use crate::plan::WorkerPlan;

/// Label with the Worker's name on its Deployment and pods; the Deployment's selector and the
/// Worker's `status.selector` (scale subresource).
pub use crate::plan::names::WORKER_LABEL;

/// The Deployment of a Worker with `replicas`. Pods carry `berth.dev/stack` only when the
/// Worker belongs to a stack (so the stack's network rules apply to it).
pub fn deployment(worker: &Worker, plan: &WorkerPlan, replicas: i32) -> Deployment {
    let name = plan.worker.clone();
    let owner = Owner {
        stack: plan.stack.clone().unwrap_or_else(|| name.clone()),
        namespace: worker.namespace(),
        owner_ref: worker.controller_owner_ref(&()),
    };
    let mut component = plan.component.clone();
    component.replicas = replicas;
    let mut d = workload::deployment(&owner, &component);
    let fix = |labels: &mut BTreeMap<String, String>| {
        labels.insert(WORKER_LABEL.into(), name.clone());
        if plan.stack.is_none() {
            labels.remove(STACK_LABEL);
        }
    };
    if let Some(l) = d.metadata.labels.as_mut() {
        fix(l);
    }
    if let Some(spec) = d.spec.as_mut() {
        spec.selector = LabelSelector {
            match_labels: Some([(WORKER_LABEL.to_string(), name.clone())].into()),
            match_expressions: None,
        };
        if let Some(l) = spec
            .template
            .metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
        {
            fix(l);
        }
    }
    d
}

/// Whether two statuses differ in anything but the queue depth.
pub fn differs_beyond_depth(a: &WorkerStatus, b: &WorkerStatus) -> bool {
    let mut a = a.clone();
    a.queue_depth = b.queue_depth;
    &a != b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::worker::plan_worker;
    use serde_json::json;

    fn worker(extra: serde_json::Value) -> Worker {
        let mut w = json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Worker",
            "metadata": {"name": "render", "namespace": "prod", "uid": "u-1"},
            "spec": {"image": "w:1", "command": ["node", "worker.js"],
                "queue": {"type": "bullmq", "name": "video",
                    "redis": {"urlSecretRef": {"name": "cache", "key": "url"}}},
                "terminationGracePeriodSeconds": 600,
                "resources": {"cpu": "1", "memory": "1Gi"}}
        });
        w["spec"]
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(w).unwrap()
    }

    #[test]
    fn deployment_of_a_standalone_worker() {
        let w = worker(json!({}));
        let plan = plan_worker(&w, None).unwrap();
        let d = deployment(&w, &plan, 4);
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap(),
            &BTreeMap::from([(WORKER_LABEL.to_string(), "render".to_string())])
        );
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(pod_labels["app.kubernetes.io/component"], "worker");
        assert_eq!(pod_labels[WORKER_LABEL], "render");
        assert!(!pod_labels.contains_key(STACK_LABEL));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(600));
        let c = &pod.containers[0];
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        assert!(c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .any(|e| e.name == "REDIS_URL" && e.value.is_none()));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Worker", "u-1"));
        assert_eq!(owner.controller, Some(true));
    }
}
