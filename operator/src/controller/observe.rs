//! Reading the caches: observed objects as JSON for the diff, and component readiness for the
//! status.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::api::appstack::ComponentStatus;
use crate::api::{Certificate, Worker};
use crate::plan::{Component, StackPlan};

use super::child::{Child, Kept};
use super::Stores;
use crate::k8s::meta::STACK_LABEL;
use crate::plan::names;
use crate::plan::worker::initial_replicas;
use crate::status::{Facts, DEGRADED, READY};

/// What a cache holds of an object, for comparing with what berth would apply.
pub enum Seen {
    /// The whole object, as JSON.
    Whole(serde_json::Value),
    /// Only the digest of what berth could have set ([`super::trim`]).
    Digest(String),
}

/// An object as the AppStack controller's caches hold it.
pub trait CachedChild {
    /// The caches keep only a digest of objects of this kind ([`Child`]).
    const TRIMMED: bool = false;
    /// `None`: nothing usable (an object that does not match its schema).
    fn seen(&self) -> Option<Seen>;
    /// The `berth.dev/stack` label.
    fn stack_label(&self) -> Option<&str>;
}

impl<K: Kept> CachedChild for Child<K> {
    const TRIMMED: bool = true;
    fn seen(&self) -> Option<Seen> {
        Some(Seen::Digest(self.digest.clone()))
    }
    fn stack_label(&self) -> Option<&str> {
        self.stack.as_deref()
    }
}

impl<K: Serialize + Resource> CachedChild for DeserializeGuard<K> {
    fn seen(&self) -> Option<Seen> {
        // An object that does not parse is never up to date: applying repairs it.
        self.0
            .as_ref()
            .ok()
            .and_then(|k| serde_json::to_value(k).ok())
            .map(Seen::Whole)
    }
    fn stack_label(&self) -> Option<&str> {
        self.labels().get(STACK_LABEL).map(String::as_str)
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
    crate::status::condition(conditions, READY)
}

fn status_of(c: &Component, ready: i32, message: String) -> ComponentStatus {
    ComponentStatus {
        name: c.name.clone(),
        kind: c.kind.as_str().into(),
        desired_replicas: c.replicas,
        ready_replicas: ready,
        image: c.image.clone(),
        message,
    }
}

/// Every component of a plan as observed in the caches, in the plan's order, then workers,
/// then the proxy.
pub fn components(ns: &str, plan: &StackPlan, s: &Stores) -> Vec<Facts> {
    let mut out = Vec::new();
    for c in &plan.components {
        let o = if c.storage.is_some() {
            let sts = get(&s.stateful_sets, ns, &c.host);
            stateful_set_facts(c, sts.as_deref())
        } else {
            let d = get(&s.deployments, ns, &c.host);
            deployment_facts(c, d.as_deref())
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
            .filter(|r| {
                get(
                    &s.ingresses,
                    ns,
                    &names::route_ingress(&plan.stack, &r.slug),
                )
                .is_some()
            })
            .count();
        let mut message = String::new();
        if present < expected {
            message = format!("{present}/{expected} Ingresses exist");
        } else if let Some(tls) = &e.tls {
            message = certificate_message(ns, &tls.certificate, &s.certificates);
        }
        out.push(Facts {
            status: ComponentStatus {
                name: "proxy".into(),
                kind: "proxy".into(),
                desired_replicas: 1,
                ready_replicas: i32::from(message.is_empty()),
                image: String::new(),
                message,
            },
            rolling: false,
            failing: None,
        });
    }
    out
}

/// A component run by a StatefulSet (`None`: not created yet).
pub fn stateful_set_facts(c: &Component, sts: Option<&Child<StatefulSet>>) -> Facts {
    let Some(sts) = sts else {
        return missing(c, "StatefulSet");
    };
    let st = sts.status.clone().unwrap_or_default();
    let rolling = st.observed_generation < sts.metadata.generation
        || st.updated_replicas.unwrap_or(0) < c.replicas
        || (st.update_revision.is_some() && st.current_revision != st.update_revision);
    let ready = st.ready_replicas.unwrap_or(0);
    Facts {
        status: status_of(c, ready, rollout_message(rolling)),
        rolling,
        failing: None,
    }
}

/// A component run by a Deployment (`None`: not created yet). A rollout past its progress
/// deadline is failing, not progressing (as on a Docker host, where a new version that does not
/// become healthy holds the rollout).
pub fn deployment_facts(c: &Component, d: Option<&Child<Deployment>>) -> Facts {
    let Some(d) = d else {
        return missing(c, "Deployment");
    };
    let st = d.status.clone().unwrap_or_default();
    let stuck = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing" && c.status == "False")
        .map(|c| {
            c.message
                .clone()
                .unwrap_or_else(|| c.reason.clone().unwrap_or_default())
        });
    let rolling = stuck.is_none()
        && (st.observed_generation < d.metadata.generation
            || st.updated_replicas.unwrap_or(0) < c.replicas);
    let message = stuck.clone().unwrap_or_else(|| rollout_message(rolling));
    Facts {
        status: status_of(c, st.ready_replicas.unwrap_or(0), message),
        rolling,
        failing: stuck,
    }
}

fn rollout_message(rolling: bool) -> String {
    if rolling {
        "rolling out".into()
    } else {
        String::new()
    }
}

fn missing(c: &Component, object: &str) -> Facts {
    Facts {
        status: status_of(c, 0, format!("{object} {} not created yet", c.host)),
        rolling: true,
        failing: None,
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
) -> Facts {
    let spec_desired = initial_replicas(spec);
    let image = spec.image.clone();
    let facts = |desired: i32, ready: i32, message: String, rolling: bool| Facts {
        status: ComponentStatus {
            name: name.into(),
            kind: "worker".into(),
            desired_replicas: desired,
            ready_replicas: ready,
            image: image.clone(),
            message,
        },
        rolling,
        failing: None,
    };
    let Some(w) = get(workers, ns, name) else {
        return facts(
            spec_desired,
            0,
            format!("Worker {name} not created yet"),
            true,
        );
    };
    let Ok(w) = &w.0 else {
        return facts(
            spec_desired,
            0,
            "does not match the CRD schema".into(),
            false,
        );
    };
    let Some(st) = &w.status else {
        return facts(
            spec_desired,
            0,
            "waiting for the Worker controller".into(),
            true,
        );
    };
    let desired = st.desired_replicas.unwrap_or(st.replicas);
    let rolling = st.observed_generation < w.metadata.generation;
    let mut f = match ready_condition(&st.conditions) {
        Some(c) if c.status == "True" => facts(desired, desired, String::new(), rolling),
        Some(c) => facts(desired, 0, c.message.clone(), rolling),
        None => facts(desired, 0, "no Ready condition yet".into(), true),
    };
    // A Worker that is Degraded makes its stack Degraded, on both backends.
    f.failing = crate::status::condition(&st.conditions, DEGRADED)
        .filter(|c| c.status == "True")
        .map(|c| c.message.clone());
    f
}
