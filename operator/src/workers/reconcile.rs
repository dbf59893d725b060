//! One reconcile of a Worker: dereference (AppStack, Redis Secret) → plan → build → apply
//! the Deployment → hand the Worker to the autoscaler → status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use crate::api::common::SecretKeyRef;
use crate::api::{AppStack, Worker};
use crate::autoscale::{Driver, Policy, QueueProbe, RedisTarget, WorkerEntry};
use crate::controller::cache::Cache;
use crate::controller::trim;
use crate::plan::wiring::{stack_urls, UrlSource};
use crate::plan::worker::{plan_worker, start_replicas};
use crate::plan::EnvValue;

use super::build;
use super::state::{KubeTarget, Shared};
use crate::status::Cond;

/// How often a Worker is reconciled without any event. It reads nothing from the API server
/// unless something is due (see [`SECRET_REFRESH`]).
pub const RESYNC: Duration = Duration::from_secs(300);
/// The Redis Secret of a Worker is read again when the Worker or its AppStack changed, once
/// when the queue probe starts failing (rotated credentials are picked up at the next
/// reconcile), and at the latest after this long.
pub const SECRET_REFRESH: Duration = Duration::from_secs(3600);
/// Retry delay for a Worker that cannot be carried out yet (a missing Secret or AppStack).
pub const RETRY: Duration = Duration::from_secs(30);
/// Optional key of the Redis Secret with the CA certificate of a `rediss://` server.
pub const CA_KEY: &str = "ca.crt";

/// What every reconcile shares.
pub struct Context {
    pub shared: Arc<Shared>,
    pub driver: Driver<KubeTarget>,
    /// The Worker Deployments as the watch last saw them: a Deployment already as desired is
    /// not applied again (an idle Worker sends no writes).
    pub deployments: Cache<Deployment>,
    /// Which digest of each trimmed cached Deployment was seen holding which desired object.
    pub verified: crate::controller::trim::Verified,
    /// The AppStacks as their watch last saw them: the one a Worker refers to is read from
    /// here (an API read only when it is not in the cache, e.g. before the first list).
    pub stacks: Store<DeserializeGuard<AppStack>>,
}

/// The first retry delay after a failed reconcile; doubles per failure up to `BACKOFF_MAX`.
pub const BACKOFF_MIN: Duration = Duration::from_secs(5);
/// The longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// A reconcile that failed; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the Worker has no namespace")]
    NoNamespace,
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the Worker cannot be read ({0}): fix the object so it matches the Worker CRD (kubectl get worker -o yaml)")]
    Invalid(String),
}

/// The id under which the autoscaler knows a Worker.
pub fn worker_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Reconciles one Worker; an object that does not deserialize gets a Warning Event and waits
/// for a change (it never stalls the controller).
pub async fn reconcile(
    guarded: Arc<DeserializeGuard<Worker>>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let worker = match &guarded.0 {
        Ok(w) => w,
        Err(invalid) => {
            let err = ReconcileError::Invalid(invalid.error.clone());
            crate::k8s::report::publish(
                &ctx.shared.recorder,
                &guarded.object_ref(&()),
                EventType::Warning,
                "InvalidObject",
                "Reconcile",
                err.to_string(),
            )
            .await;
            tracing::warn!(worker = %guarded.name_any(), error = %err, "cannot reconcile");
            return Ok(Action::await_change());
        }
    };
    // The span is attached to the future, not entered: a guard held across an await would
    // nest the spans of every reconcile that ran on this thread meanwhile.
    let span = tracing::info_span!(
        "reconcile",
        worker = %worker_id(&worker.namespace().unwrap_or_default(), &worker.name_any())
    );
    let result = reconcile_worker(worker, &ctx).instrument(span).await;
    if let Some(ns) = worker.namespace() {
        let id = worker_id(&ns, &worker.name_any());
        ctx.shared.with(&id, |rt| {
            rt.failures = if result.is_ok() {
                0
            } else {
                rt.failures.saturating_add(1)
            };
        });
    }
    result
}

async fn reconcile_worker(worker: &Worker, ctx: &Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = worker.namespace().ok_or(ReconcileError::NoNamespace)?;
    let name = worker.name_any();
    let id = worker_id(&ns, &name);
    ctx.shared.metrics.reconciles.inc();
    let client = ctx.shared.client.clone();
    let spec = &worker.spec;
    ctx.shared.upsert(&id, |rt| {
        rt.namespace = ns.clone();
        rt.name = name.clone();
        rt.generation = worker.metadata.generation;
        rt.object_ref = worker.object_ref(&());
        rt.scaling = spec.scaling.is_some();
        // After a restart: the live status supplies the condition transition times (and an
        // unchanged status is not written again).
        if rt.written.is_none() {
            rt.written = worker.status.clone();
        }
    });

    // Dereference.
    let stack = match &spec.app_stack_ref {
        None => None,
        Some(s) => match find_stack(ctx, &ns, s).await? {
            Ok(Some(st)) => Some(st),
            Ok(None) => {
                let c = Cond::new(
                    "Ready",
                    false,
                    "StackNotFound",
                    format!("AppStack {s} (appStackRef) does not exist in namespace {ns}: create it or fix appStackRef"),
                );
                return hold(ctx, &id, c).await;
            }
            Err(invalid) => {
                let c = Cond::new(
                    "Ready",
                    false,
                    "StackInvalid",
                    format!("AppStack {s} (appStackRef) cannot be read ({invalid}): fix it so it matches the AppStack CRD"),
                );
                return hold(ctx, &id, c).await;
            }
        },
    };
    let plan = match plan_worker(worker, stack.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            return hold(
                ctx,
                &id,
                Cond::new("Ready", false, e.reason(), e.to_string()),
            )
            .await
        }
    };
    let autoscale = match &spec.scaling {
        None => None,
        Some(s) => {
            let policy = match Policy::from_spec(s) {
                Ok(p) => p,
                Err(e) => {
                    return hold(
                        ctx,
                        &id,
                        Cond::new("Ready", false, "InvalidScaling", e.to_string()),
                    )
                    .await
                }
            };
            let probe = match QueueProbe::new(&spec.queue) {
                Ok(p) => p,
                Err(e) => {
                    return hold(
                        ctx,
                        &id,
                        Cond::new("Ready", false, "InvalidQueue", e.to_string()),
                    )
                    .await
                }
            };
            let secret_ref = match redis_secret_ref(worker, stack.as_ref()) {
                Ok(r) => r,
                Err(c) => return hold(ctx, &id, c).await,
            };
            let read_for = format!(
                "{}/{}@{:?}/{:?}",
                secret_ref.name,
                secret_ref.key,
                worker.metadata.generation,
                stack.as_ref().and_then(|s| s.metadata.generation)
            );
            let cached = ctx
                .shared
                .with(&id, |rt| rt.cached_redis(&read_for, SECRET_REFRESH))
                .flatten();
            let redis = match cached {
                Some(r) => r,
                None => match read_redis_secret(&client, &ns, &secret_ref).await? {
                    Ok(r) => {
                        ctx.shared
                            .with(&id, |rt| rt.remember_redis(read_for, r.clone()));
                        r
                    }
                    Err(c) => return hold(ctx, &id, c).await,
                },
            };
            Some(WorkerEntry {
                id: id.clone(),
                policy,
                probe,
                redis,
            })
        }
    };

    // Apply the Deployment with the replica count the autoscaler owns (or spec.replicas).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let applied = {
        let _guard = ctx.shared.replicas_lock.lock().await;
        let running = if spec.scaling.is_some() {
            let known = ctx
                .shared
                .with(&id, |rt| {
                    rt.deployment_known.then_some(rt.deployment_replicas)
                })
                .flatten();
            match known {
                Some(n) => Some(n),
                None => match ctx.deployments.get(&ns, &name) {
                    Some(d) => d.replicas,
                    None => deployments
                        .get_opt(&name)
                        .await?
                        .and_then(|d| d.spec.and_then(|s| s.replicas)),
                },
            }
        } else {
            None
        };
        let replicas = start_replicas(spec, running);
        let d = build::deployment(worker, &plan, replicas);
        let desired = serde_json::to_value(&d).map_err(kube::Error::SerdeError)?;
        let applied = trim::apply_if_changed(
            &deployments,
            &ctx.deployments,
            &ctx.verified,
            &ns,
            &name,
            desired,
        )
        .await?;
        if matches!(applied, trim::Applied::Written(_)) {
            ctx.shared.metrics.writes.inc();
        }
        let applied = applied.into_record();
        ctx.shared.with(&id, |rt| {
            rt.deployment_known = true;
            rt.deployment_replicas = applied.replicas.unwrap_or(replicas);
            let st = applied.status.clone().unwrap_or_default();
            rt.observed_replicas = st.replicas;
            rt.available_replicas = st.available_replicas;
            rt.rolling = st.observed_generation < applied.generation
                || st.updated_replicas < rt.deployment_replicas;
            if rt.available_replicas >= rt.deployment_replicas {
                rt.ready_at = rt.deployment_replicas;
            }
            rt.config_error = None;
            if !rt.scaling {
                rt.desired = None;
                rt.queue = None;
            }
        });
        applied
    };
    tracing::debug!(deployment = ?applied.name, "applied");

    match autoscale {
        Some(entry) => ctx.driver.upsert(entry),
        None => ctx.driver.remove(&id),
    }
    ctx.shared.write_status(&id, false).await?;
    Ok(Action::requeue(RESYNC))
}

/// The Worker cannot be carried out: stop autoscaling it (replicas stay as they are), say why.
async fn hold(ctx: &Context, id: &str, c: Cond) -> Result<Action, ReconcileError> {
    tracing::info!(reason = %c.reason, "{}", c.message);
    ctx.driver.remove(id);
    ctx.shared.with(id, |rt| {
        rt.config_error = Some(c);
    });
    ctx.shared.write_status(id, false).await?;
    Ok(Action::requeue(RETRY))
}

/// The AppStack named `name`: from the cache, else (not listed yet, or really missing) from
/// the API server. `Err` is a stack that does not match the CRD.
async fn find_stack(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Result<Option<AppStack>, String>, kube::Error> {
    let guarded =
        crate::k8s::cached::cached_or_get(&ctx.stacks, &ctx.shared.client, ns, name).await?;
    Ok(match guarded.as_deref() {
        None => Ok(None),
        Some(DeserializeGuard(Ok(stack))) => Ok(Some(stack.clone())),
        Some(DeserializeGuard(Err(invalid))) => Err(invalid.error.clone()),
    })
}

/// Which Secret key holds the Worker's Redis URL: its own `queue.redis`, else its AppStack's
/// Redis. `Err` is a condition to show.
fn redis_secret_ref(worker: &Worker, stack: Option<&AppStack>) -> Result<SecretKeyRef, Cond> {
    let no_redis = |msg: String| Err(Cond::new("Ready", false, "RedisNotConfigured", msg));
    match (&worker.spec.queue.redis, stack) {
        (Some(r), _) => Ok(r.url_secret_ref.clone()),
        (None, Some(st)) => match stack_urls(&st.name_any(), &st.spec).redis {
            Some(UrlSource {
                value: EnvValue::Secret(r) | EnvValue::Generated(r),
                ..
            }) => Ok(r),
            _ => no_redis(format!(
                "AppStack {} has no redis: add spec.redis to it or set queue.redis on the Worker",
                st.name_any()
            )),
        },
        (None, None) => no_redis(
            "set queue.redis.urlSecretRef or appStackRef so berth can read the queue".into(),
        ),
    }
}

/// Where the Worker's queue lives, read from the Secret `secret_ref` names.
/// The outer error is an API failure (retried); the inner one a condition to show.
async fn read_redis_secret(
    client: &kube::Client,
    ns: &str,
    secret_ref: &SecretKeyRef,
) -> Result<Result<RedisTarget, Cond>, kube::Error> {
    tracing::debug!(secret = %secret_ref.name, "reading the Redis URL Secret");
    let Some(secret) = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&secret_ref.name)
        .await?
    else {
        return Ok(Err(Cond::new(
            "Ready",
            false,
            "RedisSecretNotFound",
            format!(
                "Secret {} does not exist: create it with key {} holding the redis:// or rediss:// URL",
                secret_ref.name, secret_ref.key
            ),
        )));
    };
    let data = secret.data.unwrap_or_default();
    let url = data
        .get(&secret_ref.key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|u| u.starts_with("redis://") || u.starts_with("rediss://"));
    let Some(url) = url else {
        return Ok(Err(Cond::new(
            "Ready",
            false,
            "RedisSecretInvalid",
            format!(
                "Secret {} has no key {} holding a redis:// or rediss:// URL",
                secret_ref.name, secret_ref.key
            ),
        )));
    };
    let ca = data.get(CA_KEY).map(|b| b.0.clone());
    Ok(Ok(RedisTarget::new(url, ca)))
}

/// Failed reconciles are retried with a doubling delay (5 s → 5 min); the error is logged
/// without secrets.
pub fn error_policy(
    worker: Arc<DeserializeGuard<Worker>>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    ctx.shared.metrics.reconcile_errors.inc();
    tracing::warn!(%error, "Worker reconcile failed");
    let failures = worker
        .namespace()
        .and_then(|ns| {
            ctx.shared
                .with(&worker_id(&ns, &worker.name_any()), |rt| rt.failures)
        })
        .unwrap_or(1);
    Action::requeue(backoff(failures))
}

/// The retry delay after `failures` consecutive failures (at least one).
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 5, 10, 20, 40, 80, 160, 300, 300]);
    }
}
