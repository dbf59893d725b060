//! Reading the caches: observed objects as JSON for the diff, and component readiness for the
//! status.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Resource;
use serde::Serialize;

use crate::api::appstack::ComponentStatus;
use crate::api::{Certificate, Worker};
use crate::plan::{Component, StackPlan};

use super::status::Observation;
use super::Stores;

/// A cached object as JSON, for comparing with what berth would apply.
pub trait AsJson {
    fn as_json(&self) -> Option<serde_json::Value>;
}

macro_rules! as_json_plain {
    ($($t:ty),*) => {$(
        impl AsJson for $t {
            fn as_json(&self) -> Option<serde_json::Value> {
                serde_json::to_value(self).ok()
            }
        }
    )*};
}
as_json_plain!(
    Deployment,
    StatefulSet,
    Service,
    Ingress,
    NetworkPolicy,
    Secret
);

impl<K: Serialize> AsJson for DeserializeGuard<K> {
    fn as_json(&self) -> Option<serde_json::Value> {
        // An object that does not parse is never up to date: applying repairs it.
        self.0
            .as_ref()
            .ok()
            .and_then(|k| serde_json::to_value(k).ok())
    }
}

fn get<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    ns: &str,
    name: &str,
) -> Option<std::sync::Arc<K>> {
    store.get(&ObjectRef::new(name).within(ns))
}

fn ready_condition(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

fn status_of(c: &Component, kind: &str, ready: i32, message: String) -> ComponentStatus {
    ComponentStatus {
        name: c.name.clone(),
        kind: kind.into(),
        desired_replicas: c.replicas,
        ready_replicas: ready,
        image: c.image.clone(),
        message,
    }
}

/// Every component of a plan as observed in the caches, in the plan's order, then workers,
/// then the proxy.
pub fn components(ns: &str, plan: &StackPlan, s: &Stores) -> Vec<Observation> {
    let mut out = Vec::new();
    for c in &plan.components {
        let kind = c.kind.as_str();
        let o = if c.storage.is_some() {
            match get(&s.stateful_sets, ns, &c.host) {
                None => missing(c, kind, "StatefulSet"),
                Some(sts) => {
                    let st = sts.status.clone().unwrap_or_default();
                    let rolling = st.observed_generation < sts.metadata.generation
                        || st.updated_replicas.unwrap_or(0) < c.replicas
                        || (st.update_revision.is_some()
                            && st.current_revision != st.update_revision);
                    let ready = st.ready_replicas.unwrap_or(0);
                    Observation {
                        status: status_of(c, kind, ready, rollout_message(rolling)),
                        rolling,
                    }
                }
            }
        } else {
            match get(&s.deployments, ns, &c.host) {
                None => missing(c, kind, "Deployment"),
                Some(d) => {
                    let st = d.status.clone().unwrap_or_default();
                    let rolling = st.observed_generation < d.metadata.generation
                        || st.updated_replicas.unwrap_or(0) < c.replicas;
                    let stuck = st
                        .conditions
                        .iter()
                        .flatten()
                        .find(|c| c.type_ == "Progressing" && c.status == "False")
                        .and_then(|c| c.message.clone());
                    let message = stuck.unwrap_or_else(|| rollout_message(rolling));
                    Observation {
                        status: status_of(c, kind, st.ready_replicas.unwrap_or(0), message),
                        rolling,
                    }
                }
            }
        };
        out.push(o);
    }
    for (name, spec) in &plan.children.workers {
        out.push(worker(ns, name, spec, &s.workers));
    }
    if let Some(e) = &plan.exposure {
        let expected = e.routes.len();
        let present = e
            .routes
            .iter()
            .filter(|r| get(&s.ingresses, ns, &format!("{}-{}", plan.stack, r.slug)).is_some())
            .count();
        let mut message = String::new();
        if present < expected {
            message = format!("{present}/{expected} Ingresses exist");
        } else if let Some(tls) = &e.tls {
            message = certificate_message(ns, &tls.certificate, &s.certificates);
        }
        out.push(Observation {
            status: ComponentStatus {
                name: "proxy".into(),
                kind: "proxy".into(),
                desired_replicas: 1,
                ready_replicas: i32::from(message.is_empty()),
                image: String::new(),
                message,
            },
            rolling: false,
        });
    }
    out
}

fn rollout_message(rolling: bool) -> String {
    if rolling {
        "rolling out".into()
    } else {
        String::new()
    }
}

fn missing(c: &Component, kind: &str, object: &str) -> Observation {
    Observation {
        status: status_of(c, kind, 0, format!("{object} {} not created yet", c.host)),
        rolling: true,
    }
}

/// Empty when the Certificate is Ready, else what it waits for.
fn certificate_message(
    ns: &str,
    name: &str,
    certs: &Store<DeserializeGuard<Certificate>>,
) -> String {
    let Some(cert) = get(certs, ns, name) else {
        return format!("Certificate {name} does not exist yet");
    };
    let Ok(cert) = &cert.0 else {
        return format!("Certificate {name} does not match the CRD schema");
    };
    let conditions = cert
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    match ready_condition(conditions) {
        Some(c) if c.status == "True" => String::new(),
        Some(c) => format!("Certificate {name} not ready: {}", c.message),
        None => format!("Certificate {name} not issued yet"),
    }
}

fn worker(
    ns: &str,
    name: &str,
    spec: &crate::api::WorkerSpec,
    workers: &Store<DeserializeGuard<Worker>>,
) -> Observation {
    let spec_desired = spec
        .replicas
        .or(spec.scaling.as_ref().map(|s| s.min_replicas))
        .unwrap_or(1);
    let image = spec.image.clone();
    let status = |desired: i32, ready: i32, message: String| ComponentStatus {
        name: name.into(),
        kind: "worker".into(),
        desired_replicas: desired,
        ready_replicas: ready,
        image: image.clone(),
        message,
    };
    let Some(w) = get(workers, ns, name) else {
        return Observation {
            status: status(spec_desired, 0, format!("Worker {name} not created yet")),
            rolling: true,
        };
    };
    let Ok(w) = &w.0 else {
        return Observation {
            status: status(spec_desired, 0, "does not match the CRD schema".into()),
            rolling: false,
        };
    };
    let Some(st) = &w.status else {
        return Observation {
            status: status(spec_desired, 0, "waiting for the Worker controller".into()),
            rolling: true,
        };
    };
    let desired = st.desired_replicas.unwrap_or(st.replicas);
    let rolling = st.observed_generation < w.metadata.generation;
    match ready_condition(&st.conditions) {
        Some(c) if c.status == "True" => Observation {
            status: status(desired, desired, String::new()),
            rolling,
        },
        Some(c) => Observation {
            status: status(desired, 0, c.message.clone()),
            rolling,
        },
        None => Observation {
            status: status(desired, 0, "no Ready condition yet".into()),
            rolling: true,
        },
    }
}
