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

use super::cache::{Cache, Record};
use super::child::{DeploymentRead, Kept, StatefulSetRead};
use super::Stores;
use crate::plan::names;
use crate::plan::worker::initial_replicas;
use crate::status::{Facts, DEGRADED, READY};

/// What a cache holds of an object, for comparing with what berth would apply.
pub enum Seen {
    /// The whole object, as JSON.
    Whole(serde_json::Value),
    /// Only the digest of what berth could have set ([`super::trim`]).
    Digest(Box<str>),
}

/// A cache of one child kind, as the AppStack controller applies and prunes against it.
pub trait ChildCache {
    /// `None`: not cached, or nothing usable (an object that does not match its schema).
    fn seen(&self, ns: &str, name: &str) -> Option<Seen>;
    /// Name and uid of each object in `ns` labelled as `stack`'s whose controller owner has
    /// uid `owner`.
    fn owned(&self, ns: &str, stack: &str, owner: &str) -> Vec<(String, Option<String>)>;
}

impl<K: Kept> ChildCache for Cache<K> {
    fn seen(&self, ns: &str, name: &str) -> Option<Seen> {
        self.get(ns, name)
            .map(|r| Seen::Digest(r.digest.to_string().into()))
    }
    fn owned(&self, ns: &str, stack: &str, owner: &str) -> Vec<(String, Option<String>)> {
        self.in_namespace(ns)
            .iter()
            .filter(|r| {
                r.stack.as_deref() == Some(stack) && r.owner.as_ref().is_some_and(|o| o.is(owner))
            })
            .map(|r| (r.name.to_string(), r.uid.as_ref().map(ToString::to_string)))
            .collect()
    }
}

impl<K> ChildCache for Store<DeserializeGuard<K>>
where
    K: Serialize + Resource<DynamicType = ()> + Clone,
{
    fn seen(&self, ns: &str, name: &str) -> Option<Seen> {
        // An object that does not parse is never up to date: applying repairs it.
        let o = get(self, ns, name)?;
        let k = o.0.as_ref().ok()?;
        // Cached by its digest (`trim::lean_generated`), else whole.
        match super::trim::cached_digest(k) {
            Some(d) => Some(Seen::Digest(d.into())),
            None => serde_json::to_value(k).ok().map(Seen::Whole),
        }
    }
    fn owned(&self, ns: &str, stack: &str, owner: &str) -> Vec<(String, Option<String>)> {
        self.state()
            .iter()
            .filter(|o| o.namespace().as_deref() == Some(ns))
            .filter(|o| super::trim::stack_of(&***o) == Some(stack))
            .filter(|o| {
                o.owner_references()
                    .iter()
                    .any(|r| r.controller == Some(true) && r.uid == owner)
            })
            .map(|o| (o.name_any(), o.uid()))
            .collect()
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
            let sts = s.stateful_sets.get(ns, &c.host);
            stateful_set_facts(c, sts.as_deref())
        } else {
            let d = s.deployments.get(ns, &c.host);
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
                s.ingresses
                    .get(ns, &names::route_ingress(&plan.stack, &r.slug))
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
pub fn stateful_set_facts(c: &Component, sts: Option<&Record<StatefulSet>>) -> Facts {
    let Some(sts) = sts else {
        return missing(c, "StatefulSet");
    };
    let default = StatefulSetRead::default();
    let st = sts.status.as_ref().unwrap_or(&default);
    let rolling = st.observed_generation < sts.generation
        || st.updated_replicas < c.replicas
        || st.revision_pending;
    Facts {
        status: status_of(c, st.ready_replicas, rollout_message(rolling)),
        rolling,
        failing: None,
    }
}

/// A component run by a Deployment (`None`: not created yet). A rollout past its progress
/// deadline is failing, not progressing (as on a Docker host, where a new version that does not
/// become healthy holds the rollout).
pub fn deployment_facts(c: &Component, d: Option<&Record<Deployment>>) -> Facts {
    let Some(d) = d else {
        return missing(c, "Deployment");
    };
    let default = DeploymentRead::default();
    let st = d.status.as_ref().unwrap_or(&default);
    let stuck = st.stuck.as_deref().map(String::from);
    let rolling = stuck.is_none()
        && (st.observed_generation < d.generation || st.updated_replicas < c.replicas);
    let message = stuck.clone().unwrap_or_else(|| rollout_message(rolling));
    Facts {
        status: status_of(c, st.ready_replicas, message),
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
