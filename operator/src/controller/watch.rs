//! The watches of the AppStack controller: one reflector per child kind (label
//! `app.kubernetes.io/managed-by=berth`, managedFields and kubectl's last-applied annotation dropped) feeding the stores and the
//! controller's triggers, and the readiness signal once every cache is listed.

use super::*;
use crate::plan::names::WORKER_LABEL;

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

pub(super) fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch that fills a store with each object as `prepare` leaves it ([`trim::lean`]) and
/// yields the objects it touched, for `owns_stream`/`watches_stream`.
pub(super) fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    prepare: fn(&mut K),
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, config)
        .default_backoff()
        .modify(prepare)
        .reflect(writer)
        .touched_objects()
}

/// A watch of a child kind that fills `cache` with a [`cache::Record`] of each object; its
/// events carry each object as [`Child`], which a `Controller` maps to its owner.
pub fn watch_into<K: child::Kept>(
    api: Api<Child<K>>,
    config: watcher::Config,
    cache: Cache<K>,
) -> impl Stream<Item = Result<watcher::Event<Child<K>>, watcher::Error>> + Send + 'static {
    watcher(api, config)
        .default_backoff()
        .inspect(move |event| {
            if let Ok(event) = event {
                cache.apply_watcher_event(event);
            }
        })
}

/// [`watch_into`], yielding the objects it touched (for `owns_stream`).
fn reflect_children<K: child::Kept>(
    api: Api<Child<K>>,
    config: watcher::Config,
    cache: Cache<K>,
) -> impl Stream<Item = Result<Child<K>, watcher::Error>> + Send + 'static {
    watch_into(api, config, cache).touched_objects()
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

/// The caches the AppStack controller shares with the Worker and Backup controllers of the
/// same process: it drives the AppStack watch (they read its cache), and reads theirs.
pub struct SharedCaches {
    pub stacks: synced::MainWatch<DeserializeGuard<AppStack>>,
    pub workers: SharedCache<DeserializeGuard<Worker>>,
    pub backups: SharedCache<DeserializeGuard<Backup>>,
    /// `None` where no Certificate controller runs beside it: then it watches them itself.
    pub certificates: Option<SharedCache<DeserializeGuard<Certificate>>>,
}

/// Another controller's main cache and the stream of its changes.
pub struct SharedCache<K: Resource<DynamicType = ()> + Clone + 'static> {
    pub store: Store<K>,
    pub changes: futures::stream::BoxStream<'static, Arc<K>>,
}

impl<K> SharedCache<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Subscribes to `watch` (before it runs).
    pub fn of(watch: &synced::MainWatch<K>) -> Self {
        SharedCache {
            store: watch.store(),
            changes: watch.subscribe().boxed(),
        }
    }
}

impl SharedCache<DeserializeGuard<AppStack>> {
    /// A Worker or Backup controller's own AppStack cache, where it runs without the AppStack
    /// controller's: kept without status (neither reads it); polling `changes` drives it.
    pub fn own_stacks(api: Api<DeserializeGuard<AppStack>>) -> Self {
        let (store, writer) = reflector::store();
        let changes = watcher(api, synced::watch_config().any_semantic())
            .default_backoff()
            .modify(trim::lean_stack)
            .reflect(writer)
            .applied_objects()
            .filter_map(|r| futures::future::ready(r.ok().map(Arc::new)))
            .boxed();
        SharedCache { store, changes }
    }
}

/// [`run_with`], raising `synced` once every cache holds a first complete list (for /readyz).
pub async fn run_synced(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    synced: Option<synced::Synced>,
) -> Result<(), Error> {
    run_shared(client, settings, metrics, shutdown, synced, None).await
}

/// [`run_synced`] with the caches shared with the Worker and Backup controllers (`shared`), or
/// with its own (`None`).
pub async fn run_shared(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    synced: Option<synced::Synced>,
    shared: Option<SharedCaches>,
) -> Result<(), Error> {
    let ns = settings.namespace.as_deref();
    let (mut stores, w) = stores();
    let children = crate::controller::synced::watch_config()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGER}"))
        .any_semantic();
    // A Worker's Deployment belongs to the Worker controller (label berth.dev/worker).
    let deployments = crate::controller::synced::watch_config()
        .labels(&format!(
            "app.kubernetes.io/managed-by={MANAGER},!{WORKER_LABEL}"
        ))
        .any_semantic();
    let main_synced = synced::Synced::default();
    let (stack_watch, others) = match shared {
        Some(SharedCaches {
            stacks,
            workers,
            backups,
            certificates,
        }) => (stacks, Some((workers, backups, certificates))),
        None => (
            synced::MainWatch::new(
                scoped::<DeserializeGuard<AppStack>>(&client, ns),
                crate::controller::synced::watch_config().any_semantic(),
            ),
            None,
        ),
    };
    let (trigger, reader) = stack_watch.into_stream(main_synced.clone());
    // Creating a stack's children fires one event per child: merged into one reconcile.
    let controller = Controller::for_stream(trigger, reader)
        .with_config(synced::controller_config(Duration::from_millis(500)));
    let stacks = controller.store();
    let c = &client;
    let controller = controller
        .owns_stream(reflect_children(
            scoped::<Child<Deployment>>(c, ns),
            deployments,
            w.deployments,
        ))
        .owns_stream(reflect_children(
            scoped::<Child<StatefulSet>>(c, ns),
            children.clone(),
            w.stateful_sets,
        ))
        .owns_stream(reflect_children(
            scoped::<Child<Service>>(c, ns),
            children.clone(),
            w.services,
        ))
        .owns_stream(reflect_children(
            scoped::<Child<Ingress>>(c, ns),
            children.clone(),
            w.ingresses,
        ))
        .owns_stream(reflect_children(
            scoped::<Child<NetworkPolicy>>(c, ns),
            children.clone(),
            w.network_policies,
        ))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned());
    // Workers and Backups: the Worker and Backup controllers' caches where they run beside this
    // one (each object kept once), else watches of their own.
    // Workers, Backups and Certificates: the caches of their own controllers where those run
    // beside this one (each object kept once), else watches of this controller's own.
    // Certificates: every one, owned ones and those a stack names in tls.certificateRef (a
    // stack waiting for its Certificate wakes up when it appears).
    let (controller, certificates) = match others {
        Some((workers, backups, certificates)) => {
            stores.workers = workers.store;
            stores.backups = backups.store;
            (
                controller
                    .owns_shared_stream(workers.changes)
                    .owns_shared_stream(backups.changes),
                certificates,
            )
        }
        None => (
            controller
                .owns_stream(reflect(
                    scoped::<DeserializeGuard<Worker>>(c, ns),
                    children.clone(),
                    w.workers,
                    trim::lean_generated,
                ))
                .owns_stream(reflect(
                    scoped::<DeserializeGuard<Backup>>(c, ns),
                    children,
                    w.backups,
                    trim::lean_generated,
                )),
            None,
        ),
    };
    let controller = match certificates {
        Some(certificates) => {
            stores.certificates = certificates.store;
            controller.watches_shared_stream(certificates.changes, move |cert| {
                stacks_for_certificate(&stacks, &cert)
            })
        }
        None => controller.watches_stream(
            reflect(
                scoped::<DeserializeGuard<Certificate>>(c, ns),
                crate::controller::synced::watch_config().any_semantic(),
                w.certificates,
                trim::lean_generated,
            ),
            move |cert| stacks_for_certificate(&stacks, &cert),
        ),
    };
    let ctx = Arc::new(Context::new(
        client,
        stores,
        settings.build,
        settings.instance,
        metrics,
    ));
    tokio::spawn(forget_deleted_children(ctx.clone(), shutdown.clone()));
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
pub(super) async fn mark_synced(
    main: synced::Synced,
    s: Stores,
    synced: synced::Synced,
    shutdown: CancellationToken,
) {
    let all = async {
        while !main.is_set() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        s.deployments.ready().await;
        s.stateful_sets.ready().await;
        s.services.ready().await;
        s.ingresses.ready().await;
        s.network_policies.ready().await;
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

/// Every [`RESYNC`], forgets the verified digests of children no longer cached (deleted
/// with their stack, or by someone else), so the memory stays bounded by the live children.
async fn forget_deleted_children(ctx: Arc<Context>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RESYNC) => {}
        }
        let s = &ctx.stores;
        ctx.verified.retain(|key| {
            let mut parts = key.splitn(3, '/');
            let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return false;
            };
            match kind {
                "Deployment" => s.deployments.get(ns, name).is_some(),
                "StatefulSet" => s.stateful_sets.get(ns, name).is_some(),
                "Service" => s.services.get(ns, name).is_some(),
                "Ingress" => s.ingresses.get(ns, name).is_some(),
                "NetworkPolicy" => s.network_policies.get(ns, name).is_some(),
                "Worker" => s.workers.get(&ObjectRef::new(name).within(ns)).is_some(),
                "Certificate" => s
                    .certificates
                    .get(&ObjectRef::new(name).within(ns))
                    .is_some(),
                "Backup" => s.backups.get(&ObjectRef::new(name).within(ns)).is_some(),
                _ => false,
            }
        });
    }
}

/// The stacks a Certificate concerns: its controller owner, and stacks referring to it.
pub(super) fn stacks_for_certificate(
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
