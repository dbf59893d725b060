//! The Kubernetes Backup controller: each reconcile resolves the database, applies the PVC and
//! the CronJob, starts a backup-now Job when the annotation has a new value, and writes the
//! status computed from the Backup's Jobs (only when it changed).
//!
//! Events: Backup watches (and owned CronJobs), plus Jobs labelled `berth.dev/backup`, which the
//! CronJob's Jobs carry from its template; a finished Job therefore triggers the reconcile that
//! records it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use super::{
    backup_now_value, cron_job, now_job, now_job_exists, observe, pvc, JobInputs, BACKUP_LABEL,
};
use crate::api::common::SecretKeyRef;
use crate::api::{AppStack, Backup, BackupStatus};
use crate::backup::report::{blocked_status, status_from_jobs};
use crate::backup::BackupError;
use crate::controller::cache::Cache;
use crate::controller::child::Child;
use crate::k8s::meta::MANAGER;

/// How often a Backup is looked at without any event (a safety net, not the mechanism).
pub const RESYNC: Duration = Duration::from_secs(600);
/// Retry delay after a failed reconcile.
pub const RETRY: Duration = Duration::from_secs(30);
/// Retry delay while the spec cannot be carried out (e.g. the AppStack does not exist yet).
pub const BLOCKED_RETRY: Duration = Duration::from_secs(60);
/// The berth image backup pods start from when `BERTH_IMAGE` is not set: what `make image`
/// tags (the chart always sets `BERTH_IMAGE` to the operator's own image).
pub const DEFAULT_IMAGE: &str = concat!("berth:", env!("CARGO_PKG_VERSION"));

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The controller's Prometheus metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    backup_now_jobs: Counter,
}

impl Metrics {
    /// Registers `berth_backup_reconciles_total{result}` and `berth_backup_now_jobs_total`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        registry.register(
            "berth_backup_reconciles",
            "Reconciles of Backup objects, by result",
            m.reconciles.clone(),
        );
        registry.register(
            "berth_backup_now_jobs",
            "Jobs started by the berth.dev/backup-now annotation",
            m.backup_now_jobs.clone(),
        );
        m
    }

    fn count(&self, result: &str) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// The berth image the backup pods run.
    pub image: String,
    /// The CronJobs as the watch last saw them: one already as desired is not applied again.
    pub cron_jobs: Cache<CronJob>,
    /// Which digest of each trimmed cached CronJob was seen holding which desired object.
    pub verified: crate::controller::trim::Verified,
    /// The AppStacks as their watch last saw them (an API read only for one not in it).
    pub stacks: Store<DeserializeGuard<AppStack>>,
    /// The Backups' Jobs as their watch last saw them; `None` (no watch running): listed.
    pub jobs: Option<Store<Job>>,
    /// The hash of the volume claim last applied per Backup (`namespace/name`): applied again
    /// only when it changes (a claim's spec is immutable but for its size).
    pub(crate) applied_claims: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Consecutive failed reconciles per Backup (`namespace/name`), for the backoff.
    pub(crate) failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, image: String) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "berth-backup".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Context {
            client,
            metrics,
            recorder,
            image,
            cron_jobs: Cache::default(),
            verified: Default::default(),
            stacks: reflector::store().0,
            jobs: None,
            applied_claims: Default::default(),
            failures: Default::default(),
        }
    }
}

/// Runs the Backup controller until `shutdown` is cancelled. `namespace: None` watches all.
/// The backup pods run the image named by `BERTH_IMAGE` (the chart sets it to the operator's
/// own image), else [`DEFAULT_IMAGE`].
pub async fn run(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), BackupError> {
    run_synced(client, namespace, metrics, shutdown, Default::default()).await
}

/// [`run`], raising `synced` once the Backup cache holds a first list (for /readyz).
pub async fn run_synced(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    synced: crate::controller::synced::Synced,
) -> Result<(), BackupError> {
    run_shared(client, namespace, metrics, shutdown, synced, None).await
}

/// The caches the Backup controller shares with the AppStack controller of the same process:
/// it drives the Backup watch (the AppStack controller reads its cache) and reads the
/// AppStack controller's cache of stacks.
pub struct SharedCaches {
    pub backups: crate::controller::synced::MainWatch<DeserializeGuard<Backup>>,
    pub stacks: Store<DeserializeGuard<AppStack>>,
}

/// [`run_synced`] with caches shared with the AppStack controller (`shared`), or its own.
pub async fn run_shared(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    synced: crate::controller::synced::Synced,
    shared: Option<SharedCaches>,
) -> Result<(), BackupError> {
    let image = std::env::var("BERTH_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_string());
    run_inner(client, namespace, metrics, shutdown, image, synced, shared).await
}

/// [`run`] with the berth image given (tests, embedders).
pub async fn run_with_image(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    image: String,
) -> Result<(), BackupError> {
    run_inner(
        client,
        namespace,
        metrics,
        shutdown,
        image,
        Default::default(),
        None,
    )
    .await
}

async fn run_inner(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    image: String,
    synced: crate::controller::synced::Synced,
    shared: Option<SharedCaches>,
) -> Result<(), BackupError> {
    let (backups, cron_jobs, jobs): (Api<DeserializeGuard<Backup>>, Api<Child<CronJob>>, Api<Job>) =
        match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    let stacks: Api<DeserializeGuard<AppStack>> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let cron_job_cache = Cache::default();
    let (job_store, job_writer) = reflector::store();
    // A periodic reconcile reads its AppStack and Jobs from caches: no request.
    let (backup_watch, stack_store, stack_cache) = match shared {
        Some(SharedCaches { backups, stacks }) => (backups, stacks, None),
        None => {
            let stacks = crate::controller::SharedCache::own_stacks(stacks);
            let drive = stacks.changes.for_each(|_| futures::future::ready(()));
            (
                crate::controller::synced::MainWatch::new(
                    backups,
                    crate::controller::synced::watch_config().any_semantic(),
                )
                .prepared_by(crate::controller::trim::lean_generated),
                stacks.store,
                Some(tokio::spawn(drive)),
            )
        }
    };
    let ctx = Arc::new(Context {
        cron_jobs: cron_job_cache.clone(),
        stacks: stack_store,
        jobs: Some(job_store),
        ..Context::new(client, metrics, image)
    });
    let managed = crate::controller::synced::watch_config().labels(BACKUP_LABEL);
    // CronJobs kept as compact records (a digest of them), Jobs without their spec (never read).
    let owned =
        crate::controller::watch_into(cron_jobs, managed.clone().any_semantic(), cron_job_cache)
            .applied_objects();
    let job_events = watcher(jobs, managed.clone().any_semantic())
        .default_backoff()
        .modify(crate::controller::trim::lean_job)
        .reflect(job_writer)
        .applied_objects();
    let (trigger, reader) = backup_watch.into_stream(synced);
    // The digests of deleted CronJobs are forgotten (memory bounded by the live ones).
    let gc = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RESYNC).await;
                ctx.verified.retain_cached(&ctx.cron_jobs);
            }
        })
    };
    Controller::for_stream(trigger, reader)
        .with_config(crate::controller::synced::controller_config(
            std::time::Duration::from_millis(200),
        ))
        .owns_stream(owned)
        .watches_stream(job_events, |job: Job| {
            let name = job.labels().get(BACKUP_LABEL).cloned()?;
            let ns = job.namespace()?;
            Some(ObjectRef::<DeserializeGuard<Backup>>::new(&name).within(&ns))
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile_guarded, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "backup reconcile failed");
            }
        })
        .await;
    if let Some(t) = stack_cache {
        t.abort();
    }
    gc.abort();
    Ok(())
}

/// Failed reconciles are retried with a doubling delay: `RETRY` (30 s) up to 10 min.
fn error_policy(
    backup: Arc<DeserializeGuard<Backup>>,
    err: &BackupError,
    ctx: Arc<Context>,
) -> Action {
    warn!(backup = %backup.name_any(), error = %err, "reconcile failed, retrying");
    ctx.metrics.count("error");
    let key = format!(
        "{}/{}",
        backup.namespace().unwrap_or_default(),
        backup.name_any()
    );
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = failures.entry(key).or_insert(0);
    *n = n.saturating_add(1);
    Action::requeue(retry_delay(*n))
}

/// The delay after `failures` consecutive failures (at least one).
pub fn retry_delay(failures: u32) -> Duration {
    RETRY
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(RESYNC)
}

/// [`reconcile`] for what the watch delivers: an object that does not deserialize gets a
/// Warning Event and waits for a change, without stalling the controller.
pub async fn reconcile_guarded(
    guarded: Arc<DeserializeGuard<Backup>>,
    ctx: Arc<Context>,
) -> Result<Action, BackupError> {
    let key = format!(
        "{}/{}",
        guarded.namespace().unwrap_or_default(),
        guarded.name_any()
    );
    match &guarded.0 {
        Ok(backup) => {
            let result = reconcile(Arc::new(backup.clone()), ctx.clone()).await;
            if result.is_ok() {
                ctx.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
            }
            result
        }
        Err(invalid) => {
            crate::k8s::report::publish(
                &ctx.recorder,
                &guarded.object_ref(&()),
                EventType::Warning,
                "InvalidObject",
                "Backup",
                format!(
                    "the Backup cannot be read ({}): fix it so it matches the Backup CRD",
                    invalid.error
                ),
            )
            .await;
            warn!(backup = %key, error = %invalid.error, "cannot reconcile");
            ctx.metrics.count("invalid");
            Ok(Action::await_change())
        }
    }
}

/// Where the database comes from: the URL's Secret key, the AppStack, the image of the
/// in-stack PostgreSQL.
type DatabaseRef = (SecretKeyRef, Option<String>, Option<String>);

/// Where the database URL comes from, or why it cannot be known yet.
async fn database_ref(
    backup: &Backup,
    ctx: &Context,
    ns: &str,
) -> Result<Result<DatabaseRef, (&'static str, String)>, BackupError> {
    if let Some(r) = &backup.spec.database.url_secret_ref {
        return Ok(Ok((r.clone(), None, None)));
    }
    let Some(stack) = &backup.spec.database.app_stack_ref else {
        return Ok(Err((
            "InvalidSpec",
            "set database.appStackRef or database.urlSecretRef".into(),
        )));
    };
    let Some(s) = find_stack(ctx, ns, stack).await? else {
        return Ok(Err((
            "AppStackNotFound",
            format!("AppStack {stack:?} does not exist in namespace {ns}; create it or fix database.appStackRef"),
        )));
    };
    let urls = crate::plan::wiring::stack_urls(stack, &s.spec);
    let Some(db) = urls.database else {
        return Ok(Err((
            "NoDatabase",
            format!("AppStack {stack:?} has no postgres; add spec.postgres or use database.urlSecretRef"),
        )));
    };
    let image = db.in_stack.then_some(db.tool_image);
    match db.value {
        crate::plan::EnvValue::Secret(r) | crate::plan::EnvValue::Generated(r) => {
            Ok(Ok((r, Some(stack.clone()), image)))
        }
        _ => Ok(Err((
            "NoDatabase",
            format!("AppStack {stack:?} has no postgres; add spec.postgres or use database.urlSecretRef"),
        ))),
    }
}

/// The AppStack `name`: from the cache, else (not listed yet, or really missing) from the API
/// server. One that does not match the CRD is an API-style error.
async fn find_stack(ctx: &Context, ns: &str, name: &str) -> Result<Option<AppStack>, BackupError> {
    let guarded = crate::k8s::cached::cached_or_get(&ctx.stacks, &ctx.client, ns, name).await?;
    match guarded.as_deref() {
        None => Ok(None),
        Some(DeserializeGuard(Ok(stack))) => Ok(Some(stack.clone())),
        Some(DeserializeGuard(Err(invalid))) => Err(kube::Error::SerdeError(
            <serde_json::Error as serde::de::Error>::custom(format!(
                "AppStack {name} does not match the AppStack CRD: {}",
                invalid.error
            )),
        )
        .into()),
    }
}

/// One reconcile of one Backup.
#[instrument(skip_all, fields(backup = %backup.name_any()))]
pub async fn reconcile(backup: Arc<Backup>, ctx: Arc<Context>) -> Result<Action, BackupError> {
    let ns = backup.namespace().unwrap_or_else(|| "default".into());
    let name = backup.name_any();
    let client = &ctx.client;
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns);
    let previous = backup.status.clone();
    let apply = PatchParams::apply(MANAGER).force();

    let (database_url, stack, stack_image) = match database_ref(&backup, &ctx, &ns).await? {
        Ok(r) => r,
        Err((reason, message)) => {
            let st = blocked_status(&backup, reason, message, previous.as_ref(), Utc::now());
            write_status(&backups, &name, previous.as_ref(), st).await?;
            ctx.metrics.count("blocked");
            return Ok(Action::requeue(BLOCKED_RETRY));
        }
    };
    let inputs = JobInputs {
        image: ctx.image.clone(),
        dump_image: super::dump_image(&backup, stack_image.as_deref()),
        database_url,
        stack,
    };

    if let Some(claim) = pvc(&backup) {
        let key = format!("{ns}/{name}");
        let hash = crate::controller::diff::hash(
            &serde_json::to_value(&claim).map_err(kube::Error::SerdeError)?,
        );
        let applied = ctx
            .applied_claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            == Some(&hash);
        if !applied {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            pvcs.patch(&claim.name_any(), &apply, &Patch::Apply(&claim))
                .await?;
            ctx.applied_claims
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, hash);
        }
    }
    let cj = cron_job(&backup, &inputs);
    let desired = serde_json::to_value(&cj).map_err(kube::Error::SerdeError)?;
    crate::controller::trim::apply_if_changed(
        &Api::<CronJob>::namespaced(client.clone(), &ns),
        &ctx.cron_jobs,
        &ctx.verified,
        &ns,
        &name,
        desired,
    )
    .await?;

    let jobs_api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let selector = ListParams::default().labels(&format!("{BACKUP_LABEL}={name}"));
    let mut jobs = match &ctx.jobs {
        Some(store) => store
            .state()
            .iter()
            .filter(|j| {
                j.namespace().as_deref() == Some(ns.as_str())
                    && j.labels().get(BACKUP_LABEL) == Some(&name)
            })
            .map(|j| (**j).clone())
            .collect(),
        None => jobs_api.list(&selector).await?.items,
    };

    if let Some(value) = backup_now_value(&backup) {
        if !now_job_exists(&jobs, value) {
            let job = now_job(&backup, &inputs, value);
            match jobs_api.create(&PostParams::default(), &job).await {
                Ok(created) => {
                    info!(job = %created.name_any(), "backup-now job started");
                    ctx.metrics.backup_now_jobs.inc();
                    publish(
                        &ctx,
                        &backup,
                        EventType::Normal,
                        "BackupStarted",
                        format!(
                            "started job {} for {}",
                            created.name_any(),
                            super::BACKUP_NOW_ANNOTATION
                        ),
                    )
                    .await;
                    jobs.push(created);
                }
                // Created by an earlier reconcile whose list did not see it yet.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    // The pods' termination reports, for the Jobs' outcome: none to read without Jobs.
    let pods = if jobs.is_empty() {
        Vec::new()
    } else {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods.list(&selector).await?.items
    };
    let observed: Vec<_> = jobs.iter().map(|j| observe(j, &pods)).collect();
    let st = status_from_jobs(&backup, &observed, previous.as_ref(), Utc::now());
    let newly_failed = ready_reason(Some(&st)) == Some("BackupFailed")
        && ready_message(Some(&st)) != ready_message(previous.as_ref());
    if newly_failed {
        publish(
            &ctx,
            &backup,
            EventType::Warning,
            "BackupFailed",
            ready_message(Some(&st)).unwrap_or_default().to_string(),
        )
        .await;
    }
    write_status(&backups, &name, previous.as_ref(), st).await?;
    ctx.metrics.count("ok");
    Ok(Action::requeue(RESYNC))
}

fn ready(
    st: Option<&BackupStatus>,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    st?.conditions.iter().find(|c| c.type_ == "Ready")
}
fn ready_reason(st: Option<&BackupStatus>) -> Option<&str> {
    ready(st).map(|c| c.reason.as_str())
}
fn ready_message(st: Option<&BackupStatus>) -> Option<&str> {
    ready(st).map(|c| c.message.as_str())
}

async fn publish(ctx: &Context, backup: &Backup, type_: EventType, reason: &str, note: String) {
    crate::k8s::report::publish(
        &ctx.recorder,
        &backup.object_ref(&()),
        type_,
        reason,
        "Backup",
        note,
    )
    .await;
}

/// Writes the status by server-side apply, only when it differs from what is there.
async fn write_status(
    api: &Api<Backup>,
    name: &str,
    previous: Option<&BackupStatus>,
    status: BackupStatus,
) -> Result<(), BackupError> {
    crate::k8s::report::apply_status(api, name, previous, status).await?;
    Ok(())
}
