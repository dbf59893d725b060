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

pub mod crd_check;
pub mod diff;
pub mod fence;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod requests;
mod secrets;
pub mod status;
pub mod synced;

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
use crate::k8s::meta::{MANAGER, STACK_LABEL};
use crate::k8s::{build, BuildOptions, Bundle, Owner};
use crate::plan::wiring::MaterializeError;
use crate::plan::{plan_stack, Observed, PlanError, StackPlan};

pub use metrics::Metrics;
use observe::AsJson;
pub use secrets::user_secret_refs;
use secrets::{check_user_secrets, ensure_generated_secrets};
use status::Problem;

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

/// Reflector caches of everything the controller reads while reconciling.
#[derive(Clone)]
pub struct Stores {
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub services: Store<Service>,
    pub ingresses: Store<Ingress>,
    pub network_policies: Store<NetworkPolicy>,
    pub workers: Store<DeserializeGuard<Worker>>,
    /// Every Certificate in scope (for `tls.certificateRef`), not only the owned ones.
    pub certificates: Store<DeserializeGuard<Certificate>>,
    pub backups: Store<DeserializeGuard<Backup>>,
}

/// The writing halves of [`Stores`], fed by watchers (or by tests).
pub struct Writers {
    pub deployments: reflector::store::Writer<Deployment>,
    pub stateful_sets: reflector::store::Writer<StatefulSet>,
    pub services: reflector::store::Writer<Service>,
    pub ingresses: reflector::store::Writer<Ingress>,
    pub network_policies: reflector::store::Writer<NetworkPolicy>,
    pub workers: reflector::store::Writer<DeserializeGuard<Worker>>,
    pub certificates: reflector::store::Writer<DeserializeGuard<Certificate>>,
    pub backups: reflector::store::Writer<DeserializeGuard<Backup>>,
}

/// Empty stores and their writers.
pub fn stores() -> (Stores, Writers) {
    let (deployments, w_deployments) = reflector::store();
    let (stateful_sets, w_stateful_sets) = reflector::store();
    let (services, w_services) = reflector::store();
    let (ingresses, w_ingresses) = reflector::store();
    let (network_policies, w_network_policies) = reflector::store();
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

/// Runs the AppStack controller until `shutdown` is cancelled, with default build options.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let settings = Settings {
        namespace,
        ..Settings::default()
    };
    run_with(client, settings, metrics, shutdown).await
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch that fills a store (without managedFields, which berth never reads) and yields
/// the objects it touched, for `owns_stream`/`watches_stream`.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects()
}

/// Runs the AppStack controller until `shutdown` is cancelled.
pub async fn run_with(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    run_synced(client, settings, metrics, shutdown, None).await
}

/// [`run_with`], raising `synced` once every cache holds a first complete list (for /readyz).
pub async fn run_synced(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    synced: Option<synced::Synced>,
) -> Result<(), Error> {
    let ns = settings.namespace.as_deref();
    let (stores, w) = stores();
    let children = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGER}"))
        .any_semantic();
    let main_synced = synced::Synced::default();
    let (trigger, reader) = synced::main_watch(
        scoped::<DeserializeGuard<AppStack>>(&client, ns),
        watcher::Config::default().any_semantic(),
        main_synced.clone(),
    );
    let controller = Controller::for_stream(trigger, reader);
    let stacks = controller.store();
    let c = &client;
    let controller = controller
        .owns_stream(reflect(
            scoped::<Deployment>(c, ns),
            children.clone(),
            w.deployments,
        ))
        .owns_stream(reflect(
            scoped::<StatefulSet>(c, ns),
            children.clone(),
            w.stateful_sets,
        ))
        .owns_stream(reflect(
            scoped::<Service>(c, ns),
            children.clone(),
            w.services,
        ))
        .owns_stream(reflect(
            scoped::<Ingress>(c, ns),
            children.clone(),
            w.ingresses,
        ))
        .owns_stream(reflect(
            scoped::<NetworkPolicy>(c, ns),
            children.clone(),
            w.network_policies,
        ))
        .owns_stream(reflect(
            scoped::<DeserializeGuard<Worker>>(c, ns),
            children.clone(),
            w.workers,
        ))
        .owns_stream(reflect(
            scoped::<DeserializeGuard<Backup>>(c, ns),
            children,
            w.backups,
        ))
        // Every Certificate: owned ones, and those a stack names in tls.certificateRef (a stack
        // waiting for its Certificate wakes up when it appears).
        .watches_stream(
            reflect(
                scoped::<DeserializeGuard<Certificate>>(c, ns),
                watcher::Config::default().any_semantic(),
                w.certificates,
            ),
            move |cert| stacks_for_certificate(&stacks, &cert),
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned());
    let ctx = Arc::new(Context::new(
        client,
        stores,
        settings.build,
        settings.instance,
        metrics,
    ));
    if let Some(synced) = synced {
        tokio::spawn(mark_synced(
            main_synced,
            ctx.stores.clone(),
            synced,
            shutdown.clone(),
        ));
    }
    info!(
        namespace = ns.unwrap_or("<all>"),
        "AppStack controller started"
    );
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(appstack = %obj.name, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
    info!("AppStack controller stopped");
    Ok(())
}

/// Raises `synced` once the AppStack cache and every child cache hold a first list.
async fn mark_synced(
    main: synced::Synced,
    s: Stores,
    synced: synced::Synced,
    shutdown: CancellationToken,
) {
    let all = async {
        while !main.is_set() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        synced::store_ready(&s.deployments).await.then_some(())?;
        synced::store_ready(&s.stateful_sets).await.then_some(())?;
        synced::store_ready(&s.services).await.then_some(())?;
        synced::store_ready(&s.ingresses).await.then_some(())?;
        synced::store_ready(&s.network_policies)
            .await
            .then_some(())?;
        synced::store_ready(&s.workers).await.then_some(())?;
        synced::store_ready(&s.certificates).await.then_some(())?;
        synced::store_ready(&s.backups).await.then_some(())
    };
    tokio::select! {
        done = all => if done.is_some() {
            info!("AppStack controller caches synced");
            synced.set();
        },
        _ = shutdown.cancelled() => {}
    }
}

/// The stacks a Certificate concerns: its controller owner, and stacks referring to it.
fn stacks_for_certificate(
    stacks: &Store<DeserializeGuard<AppStack>>,
    cert: &DeserializeGuard<Certificate>,
) -> Vec<ObjectRef<DeserializeGuard<AppStack>>> {
    let ns = cert.namespace();
    let name = cert.name_any();
    let mut out: Vec<_> = stacks
        .state()
        .iter()
        .filter(|s| s.namespace() == ns)
        .filter(|s| match &s.0 {
            Ok(stack) => {
                stack
                    .spec
                    .tls
                    .as_ref()
                    .and_then(|t| t.certificate_ref.as_deref())
                    == Some(name.as_str())
            }
            Err(_) => false,
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect();
    if let Some(owner) = cert
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "AppStack")
    {
        let mut r = ObjectRef::new(&owner.name);
        if let Some(ns) = &ns {
            r = r.within(ns);
        }
        out.push(r);
    }
    out
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

async fn apply_bundle(
    ns: &str,
    b: &Bundle,
    ctx: &Context,
    changes: &mut Changes,
) -> Result<(), Error> {
    // Destructured without `..`: a new kind in the bundle cannot be forgotten here.
    let Bundle {
        deployments,
        stateful_sets,
        services,
        ingresses,
        network_policies,
        workers,
        certificates,
        backups,
    } = b;
    let s = &ctx.stores;
    // Services and StatefulSets first: pods of the api find their dependencies' names
    // resolvable as soon as they start waiting for them.
    apply_all(ns, stateful_sets, &s.stateful_sets, ctx, changes).await?;
    apply_all(ns, services, &s.services, ctx, changes).await?;
    apply_all(ns, deployments, &s.deployments, ctx, changes).await?;
    apply_all(ns, network_policies, &s.network_policies, ctx, changes).await?;
    apply_all(ns, ingresses, &s.ingresses, ctx, changes).await?;
    apply_all(ns, certificates, &s.certificates, ctx, changes).await?;
    apply_all(ns, workers, &s.workers, ctx, changes).await?;
    apply_all(ns, backups, &s.backups, ctx, changes).await?;
    Ok(())
}

/// Server-side applies (field manager `berth`, forced) each object that differs from the cache.
async fn apply_all<K, S>(
    ns: &str,
    desired: &[K],
    store: &Store<S>,
    ctx: &Context,
    changes: &mut Changes,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
    S: Resource<DynamicType = ()> + AsJson + Clone,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let kind = K::kind(&()).to_string();
    for obj in desired {
        let name = obj.name_any();
        let mut value = serde_json::to_value(obj).map_err(|source| Error::Serialize {
            kind: kind.clone(),
            name: name.clone(),
            source,
        })?;
        diff::stamp(&mut value);
        let observed = store
            .get(&ObjectRef::new(&name).within(ns))
            .and_then(|o| o.as_json());
        if observed
            .as_ref()
            .is_some_and(|o| diff::up_to_date(&value, o))
        {
            continue;
        }
        debug!(kind, name, "applying");
        ctx.metrics.writes.inc();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await
        .map_err(|source| Error::Apply {
            kind: kind.clone(),
            name: name.clone(),
            source,
        })?;
        changes.applied.push(format!("{kind} {name}"));
    }
    Ok(())
}

async fn prune_bundle(
    ns: &str,
    stack: &AppStack,
    b: &Bundle,
    ctx: &Context,
    changes: &mut Changes,
) -> Result<(), Error> {
    let Bundle {
        deployments,
        stateful_sets,
        services,
        ingresses,
        network_policies,
        workers,
        certificates,
        backups,
    } = b;
    let s = &ctx.stores;
    prune::<Worker, _, _>(ns, stack, workers, &s.workers, ctx, changes).await?;
    prune::<Backup, _, _>(ns, stack, backups, &s.backups, ctx, changes).await?;
    prune::<Certificate, _, _>(ns, stack, certificates, &s.certificates, ctx, changes).await?;
    prune::<Ingress, _, _>(ns, stack, ingresses, &s.ingresses, ctx, changes).await?;
    prune::<Deployment, _, _>(ns, stack, deployments, &s.deployments, ctx, changes).await?;
    prune::<StatefulSet, _, _>(ns, stack, stateful_sets, &s.stateful_sets, ctx, changes).await?;
    prune::<Service, _, _>(ns, stack, services, &s.services, ctx, changes).await?;
    prune::<NetworkPolicy, _, _>(
        ns,
        stack,
        network_policies,
        &s.network_policies,
        ctx,
        changes,
    )
    .await?;
    Ok(())
}

/// Children of this stack (label and controller ownerReference uid) in the cache, sorted by
/// name, that are not among `keep`.
pub fn orphans<S: Resource<DynamicType = ()> + Clone>(
    ns: &str,
    stack: &AppStack,
    store: &Store<S>,
    keep: &BTreeSet<String>,
) -> Vec<(String, Option<String>)> {
    let uid = stack.uid();
    let name = stack.name_any();
    let mut out: Vec<(String, Option<String>)> = store
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(ns))
        .filter(|o| o.labels().get(STACK_LABEL) == Some(&name))
        .filter(|o| {
            o.owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && Some(&r.uid) == uid.as_ref())
        })
        .filter(|o| !keep.contains(&o.name_any()))
        .map(|o| (o.name_any(), o.uid()))
        .collect();
    out.sort();
    out
}

async fn prune<K, D, S>(
    ns: &str,
    stack: &AppStack,
    desired: &[D],
    store: &Store<S>,
    ctx: &Context,
    changes: &mut Changes,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + Debug,
    D: Resource,
    S: Resource<DynamicType = ()> + Clone,
{
    let keep: BTreeSet<String> = desired.iter().map(|d| d.name_any()).collect();
    let candidates = orphans(ns, stack, store, &keep);
    if candidates.is_empty() {
        return Ok(());
    }
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        ns,
        &kube::core::ApiResource::erase::<K>(&()),
    );
    let kind = K::kind(&()).to_string();
    for (name, uid) in candidates {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            // Never delete a namesake created since the cache saw this one.
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        ctx.metrics.writes.inc();
        match api.delete(&name, &dp).await {
            Ok(_) => changes.pruned.push(format!("{kind} {name}")),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(Error::Prune { kind, name, source }),
        }
    }
    Ok(())
}

/// Status (only when changed), Events, and the next action.
async fn finish(
    stack: &AppStack,
    ns: &str,
    plan: Option<&StackPlan>,
    result: Result<Option<Problem>, Error>,
    changes: Changes,
    ctx: &Context,
) -> Result<Action, Error> {
    let (problem, err) = match result {
        Ok(p) => (p, None),
        Err(e) => (
            Some(Problem {
                reason: e.reason().into(),
                message: e.to_string(),
            }),
            Some(e),
        ),
    };
    let components = plan
        .map(|p| observe::components(ns, p, &ctx.stores))
        .unwrap_or_default();
    let old = stack.status.as_ref();
    let new = status::compute(
        stack.meta().generation,
        old,
        plan.and_then(|p| p.url.clone()),
        components,
        problem.as_ref(),
        k8s_openapi::jiff::Timestamp::now(),
    );
    let regarding = stack.object_ref(&());
    for (what, list) in [
        ("applied", &changes.applied),
        ("deleted (left the spec)", &changes.pruned),
    ] {
        if !list.is_empty() {
            info!(what, objects = ?list, "changed children");
            let reason = if what == "applied" {
                "Applied"
            } else {
                "Pruned"
            };
            ctx.publish(
                &regarding,
                EventType::Normal,
                reason,
                format!("{what}: {}", list.join(", ")),
            )
            .await;
        }
    }
    if !changes.generated.is_empty() {
        ctx.publish(
            &regarding,
            EventType::Normal,
            "SecretGenerated",
            format!(
                "generated Secrets {} (created once, never rotated; values are not shown)",
                changes.generated.join(", ")
            ),
        )
        .await;
    }
    if old != Some(&new) {
        let api: Api<AppStack> = Api::namespaced(ctx.client.clone(), ns);
        let body = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "AppStack",
            "status": new,
        });
        ctx.metrics.writes.inc();
        let written = api
            .patch_status(
                &stack.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await;
        if let Err(e) = written {
            if err.is_none() {
                return Err(Error::Status(e));
            }
            warn!(error = %e, "cannot write status");
        }
        transition_events(&regarding, old, &new, problem.as_ref(), ctx).await;
    }
    if let Some(e) = err {
        warn!(error = %e, "reconcile failed");
        return Err(e);
    }
    if let Some(p) = &problem {
        ctx.metrics.error(&p.reason);
        return Ok(Action::requeue(MISSING_SECRET_RECHECK));
    }
    Ok(Action::requeue(RESYNC))
}

/// Events for what a person should know: a new problem, becoming Ready, becoming Degraded.
async fn transition_events(
    regarding: &ObjectReference,
    old: Option<&crate::api::AppStackStatus>,
    new: &crate::api::AppStackStatus,
    problem: Option<&Problem>,
    ctx: &Context,
) {
    use crate::api::appstack::Phase;
    let old_ready = status::condition(old, status::READY);
    let new_ready = status::condition(Some(new), status::READY);
    let same =
        |a: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
         b: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>| {
            a.map(|c| (&c.status, &c.reason, &c.message))
                == b.map(|c| (&c.status, &c.reason, &c.message))
        };
    let old_phase = old.and_then(|o| o.phase);
    match (problem, new.phase) {
        (Some(p), _) if !same(old_ready, new_ready) => {
            ctx.publish(regarding, EventType::Warning, &p.reason, p.message.clone())
                .await
        }
        (None, Some(Phase::Ready)) if old_phase != Some(Phase::Ready) => {
            ctx.publish(
                regarding,
                EventType::Normal,
                "Ready",
                "every component is ready".into(),
            )
            .await
        }
        (None, Some(Phase::Degraded)) if old_phase != Some(Phase::Degraded) => {
            let m = new_ready.map(|c| c.message.clone()).unwrap_or_default();
            ctx.publish(regarding, EventType::Warning, "Degraded", m)
                .await
        }
        _ => {}
    }
}
