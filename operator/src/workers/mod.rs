//! The Kubernetes Worker controller: a Deployment per Worker whose replica count the
//! autoscaler ([`crate::autoscale`]) owns when `scaling` is set (else `spec.replicas` rules,
//! and `kubectl scale worker/x` works through the scale subresource). It is the only writer
//! of Worker status.
//!
//! `berth operator` calls [`run`] with its client, metrics and shutdown token.

pub mod build;
pub mod metrics;
pub mod reconcile;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::{AppStack, Worker};
use crate::autoscale::Driver;
use crate::controller::cache::Cache;
use crate::controller::child::Child;
use crate::controller::synced::{MainWatch, Synced};
use crate::controller::SharedCache;

pub use metrics::Metrics;
pub use reconcile::{error_policy, reconcile, worker_id, Context, ReconcileError};
pub use state::{KubeTarget, Shared};

/// Why the controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("cannot list Workers ({0}): is the Worker CRD installed (kubectl apply -f crds/) and may berth list workers.berth.dev?")]
    CannotList(#[source] kube::Error),
}

/// How often the autoscaler drops Workers that were deleted.
const GC_INTERVAL: Duration = Duration::from_secs(30);

/// The context of a controller over `client` (also what tests drive without watches: with
/// an empty Deployment cache every reconcile applies).
pub fn context(client: Client, metrics: Arc<Metrics>) -> Arc<Context> {
    context_with(client, metrics, Cache::default(), reflector::store().0)
}

/// [`context`] over given caches of Deployments and AppStacks (what the watches fill).
pub fn context_with(
    client: Client,
    metrics: Arc<Metrics>,
    deployments: Cache<Deployment>,
    stacks: Store<DeserializeGuard<AppStack>>,
) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "berth".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let shared = Arc::new(Shared::new(client, recorder, metrics));
    let driver = Driver::new(KubeTarget {
        shared: shared.clone(),
    });
    Arc::new(Context {
        shared,
        driver,
        deployments,
        verified: Default::default(),
        stacks,
    })
}

/// Runs the Worker controller and its autoscaler until `shutdown`.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), WorkersError> {
    run_synced(
        client,
        namespace,
        metrics,
        shutdown,
        Synced::default(),
        false,
    )
    .await
}

/// [`run`], raising `synced` once the Worker cache holds a first list (for /readyz);
/// `keyspace_notifications` turns on the autoscaler's Redis keyspace-notification wake-ups.
pub async fn run_synced(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    synced: Synced,
    keyspace_notifications: bool,
) -> Result<(), WorkersError> {
    run_shared(
        client,
        namespace,
        metrics,
        shutdown,
        synced,
        keyspace_notifications,
        None,
    )
    .await
}

/// The caches the Worker controller shares with the AppStack controller of the same process:
/// it drives the Worker watch (the AppStack controller reads its cache) and reads the
/// AppStack controller's cache of stacks.
pub struct SharedCaches {
    pub workers: MainWatch<DeserializeGuard<Worker>>,
    pub stacks: SharedCache<DeserializeGuard<AppStack>>,
}

/// [`run_synced`] with caches shared with the AppStack controller (`shared`), or its own.
pub async fn run_shared(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    synced: Synced,
    keyspace_notifications: bool,
    shared: Option<SharedCaches>,
) -> Result<(), WorkersError> {
    let workers: Api<DeserializeGuard<Worker>> = scoped(&client, namespace.as_deref());
    let deployments: Api<Child<Deployment>> = scoped(&client, namespace.as_deref());
    let stacks: Api<DeserializeGuard<AppStack>> = scoped(&client, namespace.as_deref());
    workers
        .list(&ListParams::default().limit(1))
        .await
        .map_err(WorkersError::CannotList)?;
    let deployment_cache = Cache::default();
    let (worker_watch, stack_store, stack_changes) = match shared {
        Some(SharedCaches { workers, stacks }) => (workers, stacks.store, stacks.changes),
        None => {
            // The AppStacks Workers refer to, from a cache (a resync reads nothing).
            let stacks = SharedCache::own_stacks(stacks);
            (
                MainWatch::new(
                    workers,
                    crate::controller::synced::watch_config().any_semantic(),
                )
                .prepared_by(crate::controller::trim::lean_generated),
                stacks.store,
                stacks.changes,
            )
        }
    };
    let ctx = context_with(client, metrics, deployment_cache.clone(), stack_store);

    let driver = ctx.driver.clone();
    driver.set_keyspace_notifications(keyspace_notifications);
    let token = shutdown.clone();
    let autoscaler = tokio::spawn(async move { driver.run(token).await });

    // Kept as compact records: the digest and the replica count are what is read.
    let owned = crate::controller::watch_into(
        deployments,
        crate::controller::synced::watch_config()
            // Only Workers' Deployments: the stacks' own are the AppStack controller's.
            .labels(&format!(
                "app.kubernetes.io/managed-by=berth,{}",
                build::WORKER_LABEL
            ))
            .any_semantic(),
        deployment_cache,
    )
    .applied_objects();
    let (trigger, reader) = worker_watch.into_stream(synced);
    // A spec change of a stack reconciles its Workers; its status changes do not.
    let stack_changes = stack_changes.filter(generation_changed());
    let worker_index = reader.clone();
    let controller = Controller::for_stream(trigger, reader)
        .with_config(crate::controller::synced::controller_config(
            Duration::from_millis(200),
        ))
        .owns_stream(owned)
        .watches_shared_stream(stack_changes, move |stack| {
            workers_of_stack(&worker_index, &stack)
        })
        .graceful_shutdown_on(shutdown.clone().cancelled_owned());
    let store = controller.store();

    // Workers deleted while nothing polled them: forget them (their Deployments go with them
    // through the ownerReference).
    let gc_ctx = ctx.clone();
    let gc_token = shutdown.clone();
    let gc = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = gc_token.cancelled() => return,
                _ = tokio::time::sleep(GC_INTERVAL) => {}
            }
            if store.wait_until_ready().await.is_err() {
                return;
            }
            let live: HashSet<String> = store
                .state()
                .iter()
                .filter_map(|w| w.namespace().map(|ns| worker_id(&ns, &w.name_any())))
                .collect();
            gc_ctx.verified.retain_cached(&gc_ctx.deployments);
            for id in gc_ctx.driver.ids() {
                if !live.contains(&id) {
                    gc_ctx.driver.remove(&id);
                    gc_ctx.shared.forget(&id);
                }
            }
        }
    });

    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    shutdown.cancel();
    let _ = autoscaler.await;
    let _ = gc.await;
    Ok(())
}

/// A filter passing an object when its `metadata.generation` differs from the last one seen
/// for it (its spec changed, or it is new): the shared-stream form of kube's
/// `predicates::generation`.
fn generation_changed<K: Resource<DynamicType = ()>>(
) -> impl FnMut(&Arc<K>) -> futures::future::Ready<bool> {
    let mut seen: HashMap<ObjectRef<K>, Option<i64>> = HashMap::new();
    move |o| {
        let generation = o.meta().generation;
        let changed = seen.insert(ObjectRef::from_obj(&**o), generation) != Some(generation);
        futures::future::ready(changed || generation.is_none())
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The Workers whose `appStackRef` names `stack` (those an AppStack owns name it too).
pub fn workers_of_stack(
    workers: &Store<DeserializeGuard<Worker>>,
    stack: &DeserializeGuard<AppStack>,
) -> Vec<ObjectRef<DeserializeGuard<Worker>>> {
    let ns = stack.namespace();
    let name = stack.name_any();
    workers
        .state()
        .iter()
        .filter(|w| w.namespace() == ns)
        .filter(|w| match &w.0 {
            Ok(worker) => worker.spec.app_stack_ref.as_deref() == Some(name.as_str()),
            Err(_) => false,
        })
        .map(|w| ObjectRef::from_obj(w.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn stack(name: &str, generation: i64, rv: &str) -> Arc<DeserializeGuard<AppStack>> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
                "metadata": {"name": name, "namespace": "ns", "generation": generation,
                             "resourceVersion": rv},
                "spec": {"api": {"image": "a:1"}}
            }))
            .unwrap(),
        )
    }

    /// Stack changes reach the Worker controller only when a stack's spec changed (its
    /// generation), not for status writes: the shared stream's form of kube's predicate.
    #[tokio::test]
    async fn only_spec_changes_of_stacks_pass() {
        let events = futures::stream::iter([
            stack("shop", 1, "10"),
            stack("blog", 1, "11"),
            stack("shop", 1, "12"), // status written
            stack("shop", 2, "13"), // spec changed
            stack("shop", 2, "14"), // status written
        ]);
        let passed: Vec<String> = events
            .filter(generation_changed())
            .map(|s| s.meta().resource_version.clone().unwrap())
            .collect()
            .await;
        assert_eq!(passed, ["10", "11", "13"]);
    }
}
