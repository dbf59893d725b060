//! The AppStack controller: AppStack → plan → Kubernetes objects → server-side apply → status.
//!
//! Each reconcile is a pipeline: `plan` (pure, `plan::plan_stack`) → `check` the Secrets the
//! user must provide → `ensure` the generated Secrets (create if absent, never overwrite) →
//! `build` (pure, `k8s::build`) → `apply` what differs from the reflector caches → `prune`
//! children that left the spec → `status` (written only when it changed) and Events.
//!
//! Every child kind is watched (label `app.kubernetes.io/managed-by=berth`) into a reflector
//! store and triggers its owner's reconcile, so drift is corrected and readiness flows into the
//! status. An unchanged, healthy stack therefore costs reads from memory and no API write.
//! Deletion is Kubernetes' garbage collection through the controller ownerReferences: no
//! finalizer, since nothing outside the cluster needs cleaning.

mod apply;
pub mod cache;
pub mod child;
pub mod crd_check;
pub mod diff;
mod events;
pub mod fence;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod requests;
mod secrets;
pub mod status;
pub mod synced;
pub mod trim;
mod watch;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::api::{AppStack, Backup, Certificate, Worker, API_VERSION};
use crate::k8s::meta::MANAGER;
use crate::k8s::{build, BuildOptions, Bundle, Owner};
use crate::plan::wiring::MaterializeError;
use crate::plan::{plan_stack, Observed, PlanError, StackPlan};

use cache::Cache;
use child::Child;
pub use metrics::Metrics;
pub use secrets::user_secret_refs;
use secrets::{check_user_secrets, ensure_generated_secrets};
use status::Problem;

pub use apply::orphans;
use apply::*;
use events::*;
pub use watch::{run, run_shared, run_synced, run_with, watch_into, SharedCache, SharedCaches};

/// How long a healthy stack waits before a resync from the caches (reads only, no writes
/// unless something drifted unnoticed).
pub const RESYNC: Duration = Duration::from_secs(600);
/// How often a stack waiting for a user's Secret looks again (Secrets the user manages are
/// not watched: that would cache every Secret of the cluster in the operator).
pub const MISSING_SECRET_RECHECK: Duration = Duration::from_secs(60);
/// First and longest retry delay after a transient error (doubling in between).
pub const BACKOFF_MIN: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The `reportingController` of berth's Events.
pub const REPORTER: &str = "berth";

/// Why a reconcile failed. Messages say what to do; none holds a secret value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("AppStack {name} does not match the CRD schema ({message}): fix it with kubectl edit, or re-apply the CRDs if they are older than the operator")]
    InvalidObject { name: String, message: String },
    #[error("AppStack {0} has no namespace: AppStacks are namespaced objects")]
    NoNamespace(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Materialize(#[from] MaterializeError),
    #[error("cannot serialize {kind} {name}: {source}")]
    Serialize {
        kind: String,
        name: String,
        source: serde_json::Error,
    },
    #[error("applying {kind} {name} failed: {source}; check the operator's RBAC and the object's events")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("deleting {kind} {name}, which left the spec, failed: {source}")]
    Prune {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("reading Secret {name} failed: {source}")]
    ReadSecret { name: String, source: kube::Error },
    #[error("creating the generated Secret {name} failed: {source}")]
    CreateSecret { name: String, source: kube::Error },
    #[error("writing the status failed: {0}")]
    Status(kube::Error),
}

impl Error {
    /// A CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidObject { .. } | Error::NoNamespace(_) => "InvalidObject",
            Error::Plan(e) => e.reason(),
            Error::Materialize(_) | Error::Serialize { .. } => "InternalError",
            Error::Apply { .. } => "ApplyFailed",
            Error::Prune { .. } => "PruneFailed",
            Error::ReadSecret { .. } => "SecretReadFailed",
            Error::CreateSecret { .. } => "SecretCreateFailed",
            Error::Status(_) => "StatusWriteFailed",
        }
    }

    /// Errors only a change of the object fixes: retrying would only repeat them.
    pub fn awaits_change(&self) -> bool {
        match self {
            Error::InvalidObject { .. } | Error::NoNamespace(_) => true,
            Error::Plan(e) => !matches!(e, PlanError::Internal(_)),
            _ => false,
        }
    }
}

/// What the operator's flags decide for this controller.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Watch one namespace; `None` watches all.
    pub namespace: Option<String>,
    /// Ingress class and ingress controller namespace for the builders.
    pub build: BuildOptions,
    /// `reportingInstance` of Events (the pod name).
    pub instance: Option<String>,
}

/// Caches of everything the controller reads while reconciling: the children as compact
/// records ([`Cache`]), the berth kinds in kube's reflector stores.
#[derive(Clone)]
pub struct Stores {
    pub deployments: Cache<Deployment>,
    pub stateful_sets: Cache<StatefulSet>,
    pub services: Cache<Service>,
    pub ingresses: Cache<Ingress>,
    pub network_policies: Cache<NetworkPolicy>,
    pub workers: Store<DeserializeGuard<Worker>>,
    /// Every Certificate in scope (for `tls.certificateRef`), not only the owned ones.
    pub certificates: Store<DeserializeGuard<Certificate>>,
    pub backups: Store<DeserializeGuard<Backup>>,
}

/// The writing halves of [`Stores`], fed by watchers (or by tests).
pub struct Writers {
    pub deployments: Cache<Deployment>,
    pub stateful_sets: Cache<StatefulSet>,
    pub services: Cache<Service>,
    pub ingresses: Cache<Ingress>,
    pub network_policies: Cache<NetworkPolicy>,
    pub workers: reflector::store::Writer<DeserializeGuard<Worker>>,
    pub certificates: reflector::store::Writer<DeserializeGuard<Certificate>>,
    pub backups: reflector::store::Writer<DeserializeGuard<Backup>>,
}

/// Empty stores and their writers.
pub fn stores() -> (Stores, Writers) {
    let deployments = Cache::<Deployment>::default();
    let w_deployments = deployments.clone();
    let stateful_sets = Cache::<StatefulSet>::default();
    let w_stateful_sets = stateful_sets.clone();
    let services = Cache::<Service>::default();
    let w_services = services.clone();
    let ingresses = Cache::<Ingress>::default();
    let w_ingresses = ingresses.clone();
    let network_policies = Cache::<NetworkPolicy>::default();
    let w_network_policies = network_policies.clone();
    let (workers, w_workers) = reflector::store();
    let (certificates, w_certificates) = reflector::store();
    let (backups, w_backups) = reflector::store();
    (
        Stores {
            deployments,
            stateful_sets,
            services,
            ingresses,
            network_policies,
            workers,
            certificates,
            backups,
        },
        Writers {
            deployments: w_deployments,
            stateful_sets: w_stateful_sets,
            services: w_services,
            ingresses: w_ingresses,
            network_policies: w_network_policies,
            workers: w_workers,
            certificates: w_certificates,
            backups: w_backups,
        },
    )
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub build: BuildOptions,
    /// Who publishes Events (`berth`, the pod name).
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// Consecutive transient failures per stack (`namespace/name`), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Generated Secrets (`namespace/name`) seen to exist. Secrets are not watched: RBAC
    /// cannot scope list/watch to berth's labels, and the operator must not be able to read
    /// every Secret of the cluster. One `get` by name per generated Secret, then this set.
    known_secrets: Mutex<HashSet<String>>,
    /// Stacks (`namespace/name`) whose user Secrets were all found, with the stack's
    /// resourceVersion then: a re-check of an unchanged stack reads them from here.
    secrets_checked: Mutex<HashMap<String, String>>,
    /// Digests of trimmed cached children seen to hold what berth applies.
    pub verified: trim::Verified,
}

impl Context {
    pub fn new(
        client: Client,
        stores: Stores,
        build: BuildOptions,
        instance: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: REPORTER.into(),
            instance,
        };
        Context {
            client,
            stores,
            build,
            reporter,
            metrics,
            failures: Mutex::new(HashMap::new()),
            known_secrets: Mutex::new(HashSet::new()),
            secrets_checked: Mutex::new(HashMap::new()),
            verified: trim::Verified::default(),
        }
    }

    async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        // A Recorder per Event: its cache keys on the reason alone, so a later Event with the
        // same reason would become a repeat of the first one, with the first one's note.
        // berth publishes only on changes and transitions, so nothing needs de-duplicating.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&ev, regarding).await {
            warn!(error = %e, reason, "cannot publish event");
        } else {
            self.metrics.writes.inc();
        }
    }

    fn failure_key(obj: &DeserializeGuard<AppStack>) -> String {
        format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
    }
}

/// Retry transient errors with a doubling delay; errors only a spec change can fix wait for it.
pub fn error_policy(
    obj: Arc<DeserializeGuard<AppStack>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    if err.awaits_change() {
        return Action::await_change();
    }
    let key = Context::failure_key(&obj);
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = failures.entry(key).or_insert(0);
    let delay = BACKOFF_MIN
        .saturating_mul(2u32.saturating_pow(*n))
        .min(BACKOFF_MAX);
    *n = n.saturating_add(1);
    Action::requeue(delay)
}

/// What a reconcile changed, for Events and logs (names only).
#[derive(Debug, Default)]
pub struct Changes {
    pub applied: Vec<String>,
    pub pruned: Vec<String>,
    pub generated: Vec<String>,
}

/// Reconciles one AppStack.
pub async fn reconcile(
    obj: Arc<DeserializeGuard<AppStack>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let span = tracing::info_span!(
        "reconcile",
        appstack = %obj.name_any(),
        namespace = %obj.namespace().unwrap_or_default()
    );
    let result = async {
        match &obj.0 {
            Ok(stack) => reconcile_stack(stack, &ctx).await,
            Err(invalid) => {
                let err = Error::InvalidObject {
                    name: obj.name_any(),
                    message: invalid.error.clone(),
                };
                warn!(error = %err, "cannot reconcile");
                ctx.publish(
                    &obj.object_ref(&()),
                    EventType::Warning,
                    err.reason(),
                    err.to_string(),
                )
                .await;
                Err(err)
            }
        }
    }
    .instrument(span)
    .await;
    match &result {
        Ok(_) => {
            let key = Context::failure_key(&obj);
            ctx.failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
        Err(e) => ctx.metrics.error(e.reason()),
    }
    result
}

async fn reconcile_stack(stack: &AppStack, ctx: &Context) -> Result<Action, Error> {
    if stack.meta().deletion_timestamp.is_some() {
        // Garbage collection removes the children through their ownerReferences; applying
        // now would fight it.
        debug!("being deleted; children go with it");
        return Ok(Action::await_change());
    }
    let ns = stack
        .namespace()
        .ok_or_else(|| Error::NoNamespace(stack.name_any()))?;
    let mut changes = Changes::default();
    let plan = plan_stack(stack, &observed(stack, &ctx.stores));
    let (plan, result) = match plan {
        Ok(plan) => {
            let r = converge(stack, &ns, &plan, ctx, &mut changes).await;
            (Some(plan), r)
        }
        Err(e) => (None, Err(Error::from(e))),
    };
    finish(stack, &ns, plan.as_ref(), result, changes, ctx).await
}

/// What the planner may know beyond the spec: the Certificates of the stack's namespace.
pub fn observed(stack: &AppStack, stores: &Stores) -> Observed {
    let ns = stack.namespace();
    Observed {
        certificate_secrets: stores
            .certificates
            .state()
            .iter()
            .filter(|c| c.namespace() == ns)
            .filter_map(|c| {
                let cert = c.0.as_ref().ok()?;
                Some((cert.name_any(), cert.spec.secret_name.clone()))
            })
            .collect(),
    }
}

/// Secrets, apply, prune. `Ok(Some(problem))`: applied, but something must be fixed by a person.
async fn converge(
    stack: &AppStack,
    ns: &str,
    plan: &StackPlan,
    ctx: &Context,
    changes: &mut Changes,
) -> Result<Option<Problem>, Error> {
    let owner = Owner::of(stack);
    let problem = check_user_secrets(stack, ns, plan, ctx).await?;
    ensure_generated_secrets(ns, &owner, plan, ctx, changes).await?;
    let bundle = build(&owner, plan, &ctx.build);
    apply_bundle(ns, &bundle, ctx, changes).await?;
    prune_bundle(ns, stack, &bundle, ctx, changes).await?;
    // Pods wait for a missing Secret by themselves (CreateContainerConfigError) and start
    // once it exists, so everything is applied anyway; the status says what is missing.
    Ok(problem)
}
