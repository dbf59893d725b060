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

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::Worker;
use crate::autoscale::Driver;
use crate::controller::synced::Synced;

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
    context_with(client, metrics, reflector::store().0)
}

fn context_with(
    client: Client,
    metrics: Arc<Metrics>,
    deployments: Store<Deployment>,
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
    let (workers, deployments): (Api<DeserializeGuard<Worker>>, Api<Deployment>) = match &namespace
    {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    workers
        .list(&ListParams::default().limit(1))
        .await
        .map_err(WorkersError::CannotList)?;
    let (deployment_store, writer) = reflector::store();
    let ctx = context_with(client, metrics, deployment_store);

    let driver = ctx.driver.clone();
    driver.set_keyspace_notifications(keyspace_notifications);
    let token = shutdown.clone();
    let autoscaler = tokio::spawn(async move { driver.run(token).await });

    let owned = watcher(
        deployments,
        watcher::Config::default()
            .labels("app.kubernetes.io/managed-by=berth")
            .any_semantic(),
    )
    .default_backoff()
    .modify(|d: &mut Deployment| d.managed_fields_mut().clear())
    .reflect(writer)
    .applied_objects();
    let (trigger, reader) = crate::controller::synced::main_watch(
        workers,
        watcher::Config::default().any_semantic(),
        synced,
    );
    let controller = Controller::for_stream(trigger, reader)
        .owns_stream(owned)
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
