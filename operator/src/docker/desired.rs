//! From manifests to what should exist on the host: one [`DesiredObject`] per AppStack and per
//! Worker (a stack's workers are Workers named `<stack>-<worker>`, as on Kubernetes), each with
//! its replica groups, networks and volumes. Pure: secrets are looked up through a closure.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Secret;

use crate::api::{AppStack, Worker};
use crate::manifest::{Document, Object};
use crate::plan::network::placement;
use crate::plan::{
    self, names, set::ManifestSet, Component, EnvValue, Exposure, GeneratedSecret, PlanError,
    SecretData,
};

use super::labels;

mod container;
pub use container::{container_body, container_labels, health_config};

/// Mount options of a scratch path: writable by any user (sticky), never executable.
pub const SCRATCH_TMPFS: &str = "rw,nosuid,nodev,noexec,mode=1777";

/// Seconds a replica gets after SIGTERM when the plan does not say.
pub const DEFAULT_STOP_TIMEOUT: i64 = 10;

/// The kind of a berth object on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    AppStack,
    Worker,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AppStack => "AppStack",
            Kind::Worker => "Worker",
        }
    }
}

/// `appstack/<name>` or `worker/<name>`: the value of [`labels::OBJECT`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub name: String,
}

impl ObjectKey {
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind.as_str().to_lowercase(), self.name)
    }
}

/// Everything the host should run.
#[derive(Clone, Debug, Default)]
pub struct DesiredHost {
    pub objects: Vec<DesiredObject>,
    /// Objects that could not be planned: their containers are left as they are (a typo must
    /// not take a running stack down) and their status says why.
    pub errors: Vec<ObjectError>,
    /// Objects running on the last good version of a broken manifest file, with the error:
    /// their status is Failed while they keep running (see [`super::manifests`]).
    pub held: BTreeMap<ObjectKey, String>,
    /// Why nothing may be removed on this pass (an unreadable or emptied folder, a broken file
    /// whose objects cannot be told).
    pub hold: Option<String>,
    /// Manifest files not applied as written.
    pub broken: Vec<super::broken::BrokenFile>,
}

impl DesiredHost {
    /// Every replica group, across objects.
    pub fn groups(&self) -> impl Iterator<Item = &DesiredGroup> {
        self.objects.iter().flat_map(|o| o.groups.iter())
    }
}

/// An object that could not be planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectError {
    pub key: ObjectKey,
    pub reason: String,
    pub message: String,
    pub generation: Option<i64>,
}

/// One AppStack or Worker on the host.
#[derive(Clone, Debug)]
pub struct DesiredObject {
    pub key: ObjectKey,
    pub generation: Option<i64>,
    /// The stack whose networks it uses (its own name for an AppStack).
    pub stack: Option<String>,
    pub groups: Vec<DesiredGroup>,
    pub networks: Vec<DesiredNetwork>,
    pub volumes: Vec<String>,
    /// The stack's exposure through the proxy, with its edge network.
    pub exposure: Option<(Exposure, String)>,
    pub url: Option<String>,
    /// For Workers: the spec, for the replica source.
    pub worker: Option<Box<crate::api::WorkerSpec>>,
}

/// A network berth creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredNetwork {
    pub name: String,
    /// No route out of the host: database and cache live only here.
    pub internal: bool,
}

/// The replicas of one component: containers `<group>-<n>`.
#[derive(Clone, Debug)]
pub struct DesiredGroup {
    pub object: ObjectKey,
    pub stack: String,
    /// The plan's component (image, command, env, health, replicas, hash ...).
    pub component: Component,
    /// Wanted replicas (the plan's, or the replica source's for workers).
    pub replicas: i32,
    /// Resolved environment, `NAME=value` (may hold secrets: never logged).
    pub env: Vec<String>,
    /// Networks with the aliases the replicas answer to there.
    pub networks: Vec<(String, Vec<String>)>,
    /// The named volume and where it is mounted.
    pub volume: Option<(String, String)>,
    /// Groups (host names) that must have a healthy replica before a replica is created.
    pub waits_for: Vec<String>,
    /// Stop the old replicas before starting new ones: a data volume cannot be shared by
    /// two servers.
    pub recreate: bool,
}

impl DesiredGroup {
    /// The group name: the component's host name, prefix of its containers.
    pub fn name(&self) -> &str {
        self.group()
    }

    fn group(&self) -> &str {
        &self.component.host
    }

    pub fn container_name(&self, replica: u32) -> String {
        format!("{}-{replica}", self.component.host)
    }

    pub fn stop_timeout(&self) -> i64 {
        self.component
            .termination_grace_period_seconds
            .unwrap_or(DEFAULT_STOP_TIMEOUT)
    }
}

/// Where secret values come from.
pub trait SecretSource {
    /// The values of a generated secret, created on first use and kept forever.
    fn generated(&mut self, secret: &GeneratedSecret) -> Result<SecretData, String>;
}

/// Plans every valid AppStack and Worker of the documents.
pub fn desired_host(docs: &[Document], secrets: &mut dyn SecretSource) -> DesiredHost {
    let set = ManifestSet::from_documents(docs);
    let user_secrets: Vec<&Secret> = docs
        .iter()
        .filter_map(|d| match &d.result {
            Ok(Object::Secret(s)) => Some(&**s),
            _ => None,
        })
        .collect();
    let mut host = DesiredHost::default();
    for d in docs {
        if let Err(errors) = &d.result {
            let kind = match d.kind.as_deref() {
                Some("AppStack") => Kind::AppStack,
                Some("Worker") => Kind::Worker,
                _ => continue,
            };
            let Some(name) = d.name.clone() else { continue };
            host.errors.push(ObjectError {
                key: ObjectKey { kind, name },
                reason: "InvalidSpec".into(),
                message: errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
                generation: None,
            });
        }
    }
    let mut generated: HashMap<String, SecretData> = HashMap::new();
    for stack in &set.stacks {
        let name = stack.metadata.name.clone().unwrap_or_default();
        let key = ObjectKey {
            kind: Kind::AppStack,
            name: name.clone(),
        };
        match stack_object(stack, &set, secrets, &mut generated, &user_secrets) {
            Ok((obj, workers)) => {
                host.objects.push(obj);
                for (wname, wspec) in workers {
                    let w = Worker::new(&wname, wspec);
                    push_worker(&mut host, &w, Some(stack), &generated, &user_secrets);
                }
            }
            Err((reason, message)) => host.errors.push(ObjectError {
                key,
                reason,
                message,
                generation: stack.metadata.generation,
            }),
        }
    }
    for w in &set.workers {
        let stack = w.spec.app_stack_ref.as_deref().and_then(|s| set.stack(s));
        push_worker(&mut host, w, stack, &generated, &user_secrets);
    }
    host
}

type Failure = (String, String);

fn plan_failure(e: PlanError) -> Failure {
    (e.reason().to_string(), e.to_string())
}

#[allow(clippy::type_complexity)]
fn stack_object(
    stack: &AppStack,
    set: &ManifestSet,
    secrets: &mut dyn SecretSource,
    generated: &mut HashMap<String, SecretData>,
    user_secrets: &[&Secret],
) -> Result<(DesiredObject, Vec<(String, crate::api::WorkerSpec)>), Failure> {
    let plan = plan::plan_stack(stack, &set.observed_for(stack)).map_err(plan_failure)?;
    for s in &plan.secrets {
        let data = secrets
            .generated(s)
            .map_err(|m| ("SecretStoreFailed".to_string(), m))?;
        generated.insert(s.name.clone(), data);
    }
    let name = plan.stack.clone();
    let key = ObjectKey {
        kind: Kind::AppStack,
        name: name.clone(),
    };
    // The plan's network rules, as networks: every component on the private one (internal:
    // no route out), the clients also on the egress one (the stack's workers join it too, so
    // it always exists), what the proxy may reach on the edge one when the stack is exposed.
    let private = names::private_network(&name);
    let edge = names::edge_network(&name);
    let egress = names::egress_network(&name);
    let mut networks = vec![
        DesiredNetwork {
            name: private.clone(),
            internal: true,
        },
        DesiredNetwork {
            name: egress.clone(),
            internal: false,
        },
    ];
    if plan.exposure.is_some() {
        networks.push(DesiredNetwork {
            name: edge.clone(),
            internal: false,
        });
    }
    let mut groups = Vec::new();
    let mut volumes = Vec::new();
    for c in &plan.components {
        let at = placement(c, &plan.network);
        let mut nets = vec![(private.clone(), vec![c.host.clone()])];
        if at.egress {
            nets.push((egress.clone(), vec![]));
        }
        if at.edge && plan.exposure.is_some() {
            nets.push((edge.clone(), vec![]));
        }
        let volume = c
            .storage
            .as_ref()
            .map(|s| (names::volume_name(&c.host), s.mount_path.clone()));
        if let Some((v, _)) = &volume {
            volumes.push(v.clone());
        }
        groups.push(DesiredGroup {
            object: key.clone(),
            stack: name.clone(),
            env: resolve_env(c, generated, user_secrets)?,
            replicas: c.replicas,
            networks: nets,
            recreate: volume.is_some(),
            volume,
            waits_for: waits_for(&name, c),
            component: c.clone(),
        });
    }
    let workers = plan.children.workers.clone();
    Ok((
        DesiredObject {
            key,
            generation: stack.metadata.generation,
            stack: Some(name),
            groups,
            networks,
            volumes,
            exposure: plan.exposure.clone().map(|e| (e, edge)),
            url: plan.url.clone(),
            worker: None,
        },
        workers,
    ))
}

fn waits_for(stack: &str, c: &Component) -> Vec<String> {
    c.depends_on
        .iter()
        .filter(|d| d.in_stack)
        .map(|d| plan::names::component_host(stack, &d.name))
        .collect()
}

fn push_worker(
    host: &mut DesiredHost,
    w: &Worker,
    stack: Option<&AppStack>,
    generated: &HashMap<String, SecretData>,
    user_secrets: &[&Secret],
) {
    let name = w.metadata.name.clone().unwrap_or_default();
    let key = ObjectKey {
        kind: Kind::Worker,
        name: name.clone(),
    };
    let result = (|| -> Result<DesiredObject, Failure> {
        let wp = plan::plan_worker(w, stack).map_err(plan_failure)?;
        if let Some(s) = &wp.stack {
            if !host
                .objects
                .iter()
                .any(|o| o.key.kind == Kind::AppStack && &o.key.name == s)
            {
                return Err((
                    "AppStackNotReady".into(),
                    format!("the AppStack {s:?} it refers to could not be planned: fix it first"),
                ));
            }
        }
        let c = wp.component;
        let (networks, own) = match &wp.stack {
            // A stack's worker is placed like the stack's components: on the private network
            // (the database and cache), a client, so on the egress network too (an external
            // Redis, APIs); no rule lets anything reach it.
            Some(s) => {
                let mut nets = vec![(names::private_network(s), vec![])];
                if placement(&c, &[]).egress {
                    nets.push((names::egress_network(s), vec![]));
                }
                (nets, None)
            }
            None => {
                let n = names::worker_network(&name);
                (
                    vec![(n.clone(), vec![])],
                    Some(DesiredNetwork {
                        name: n,
                        internal: false,
                    }),
                )
            }
        };
        let stack_name = wp.stack.clone().unwrap_or_else(|| name.clone());
        let group = DesiredGroup {
            object: key.clone(),
            stack: stack_name.clone(),
            env: resolve_env(&c, generated, user_secrets)?,
            replicas: c.replicas,
            networks,
            volume: None,
            waits_for: waits_for(&stack_name, &c),
            recreate: false,
            component: c,
        };
        Ok(DesiredObject {
            key: key.clone(),
            generation: w.metadata.generation,
            stack: Some(stack_name),
            groups: vec![group],
            networks: own.into_iter().collect(),
            volumes: vec![],
            exposure: None,
            url: None,
            worker: Some(Box::new(w.spec.clone())),
        })
    })();
    match result {
        Ok(o) => host.objects.push(o),
        Err((reason, message)) => host.errors.push(ObjectError {
            key,
            reason,
            message,
            generation: w.metadata.generation,
        }),
    }
}

/// `NAME=value` for every variable; a missing secret is an error naming it (never its value).
fn resolve_env(
    c: &Component,
    generated: &HashMap<String, SecretData>,
    user_secrets: &[&Secret],
) -> Result<Vec<String>, Failure> {
    let mut out = Vec::new();
    for e in &c.env {
        let value = match &e.value {
            EnvValue::Literal(v) => v.clone(),
            EnvValue::Generated(r) => generated
                .get(&r.name)
                .and_then(|d| d.get(&r.key))
                .cloned()
                .ok_or_else(|| {
                    (
                        "SecretNotFound".to_string(),
                        format!("generated secret {}/{} is missing", r.name, r.key),
                    )
                })?,
            EnvValue::Secret(r) => user_secret(user_secrets, &r.name, &r.key).ok_or_else(|| {
                (
                    "SecretNotFound".to_string(),
                    format!(
                        "{}: the Secret {:?} with key {:?} is not in the manifests folder: add a \
                         v1 Secret manifest with that key (stringData or data)",
                        e.name, r.name, r.key
                    ),
                )
            })?,
        };
        out.push(format!("{}={value}", e.name));
    }
    Ok(out)
}

fn user_secret(secrets: &[&Secret], name: &str, key: &str) -> Option<String> {
    let s = secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))?;
    if let Some(v) = s.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.clone());
    }
    let bytes = s.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// Labels of networks and volumes.
pub fn object_labels(instance: &str, object: &ObjectKey) -> HashMap<String, String> {
    HashMap::from([
        (labels::INSTANCE.to_string(), instance.to_string()),
        (labels::OBJECT.to_string(), object.label()),
    ])
}

/// Every network of the host, deduplicated, with the object that owns it.
pub fn networks(host: &DesiredHost) -> BTreeMap<String, (DesiredNetwork, ObjectKey)> {
    let mut out = BTreeMap::new();
    for o in &host.objects {
        for n in &o.networks {
            out.entry(n.name.clone())
                .or_insert_with(|| (n.clone(), o.key.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests;
