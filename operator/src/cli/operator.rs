//! `berth operator`: runs berth's Kubernetes controllers in a cluster (or against KUBECONFIG),
//! behind a Lease so that only one replica reconciles, with /healthz (liveness), /readyz (the
//! CRDs are served and current, the caches are synced) and /metrics on one port.
//!
//! Lifecycle: wait to lead → wait until every berth CRD is served and current (checked again
//! every few seconds, reported once a minute) → run the three controllers. SIGTERM/SIGINT end
//! the process within `--shutdown-timeout-seconds` in every state: the controllers get what
//! remains after reserving time for releasing the Lease, then their reconciles are cancelled,
//! and the Lease is released so that a standby takes over at once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::exit;
pub use super::operator_args::{LogFormat, OperatorArgs};
use super::operator_ready::{healthz, metrics, readyz, watch_crds, HttpState};
use crate::controller::fence::{Fence, FenceLayer};
use crate::controller::metrics::CrdMetrics;
use crate::controller::synced::Synced;
use crate::controller::{self, leader};
use crate::k8s::network::IngressOptions;
use crate::k8s::BuildOptions;

/// Why the operator stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(
        "cannot connect to Kubernetes: {0}; run in a pod with a service account, or set KUBECONFIG"
    )]
    Client(kube::Error),
    #[error(
        "cannot read the Kubernetes client configuration: {0}; run in a pod with a service account, or set KUBECONFIG"
    )]
    Config(kube::config::InferConfigError),
    #[error("cannot listen on {addr}: {source}; choose another --http-addr")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("lost the leader Lease: exiting so a fresh start rejoins the election")]
    LostLease,
    #[error("the {name} controller stopped: {message}")]
    Controller { name: &'static str, message: String },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

pub fn run(args: OperatorArgs) -> u8 {
    init_logging(args.log_format);
    // Blocking threads serve DNS lookups (Redis dials) and file reads: a bounded pool keeps a
    // burst of lookups from starting hundreds of threads (each with its stack and malloc arena).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("{}", OperatorError::Runtime(e));
            return exit::USAGE;
        }
    };
    let code = if args.check {
        runtime.block_on(super::operator_check::run(&args))
    } else {
        match runtime.block_on(operate(args)) {
            Ok(()) => exit::OK,
            Err(e) => {
                error!("{e}");
                match e {
                    OperatorError::Client(_)
                    | OperatorError::Config(_)
                    | OperatorError::Listen { .. } => exit::USAGE,
                    _ => exit::INVALID,
                }
            }
        }
    };
    // Blocking tasks (a DNS lookup, a file read) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second init (tests) is harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// How long one API request of the controllers may wait for bytes, and for a connection. A
/// watch may be silent (no event, and no bookmark for a kind without any event since the API
/// server started) until the API server ends it at `WATCH_TIMEOUT`, 20 s before this.
const READ_TIMEOUT: Duration =
    Duration::from_secs(crate::controller::synced::WATCH_TIMEOUT.as_secs() + 20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The controllers' client (writes pass the leader's fence) and the elector's client (reads
/// bounded by `lease_read_timeout`).
pub async fn clients(
    fence: Arc<Fence>,
    lease_read_timeout: Duration,
) -> Result<(kube::Client, kube::Client), OperatorError> {
    let mut config = kube::Config::infer().await.map_err(OperatorError::Config)?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.reset_reader_on_write = true;
    let mut lease = config.clone();
    lease.read_timeout = Some(lease_read_timeout);
    lease.connect_timeout = Some(lease_read_timeout.min(CONNECT_TIMEOUT));
    config.read_timeout = Some(READ_TIMEOUT);
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(OperatorError::Client)?
        .with_layer(&FenceLayer(fence))
        .build();
    let lease = kube::Client::try_from(lease).map_err(OperatorError::Client)?;
    Ok((client, lease))
}

/// Runs a controller as a task; its error (if any) names it.
fn spawn_controller<E, F>(set: &mut JoinSet<Result<(), OperatorError>>, name: &'static str, fut: F)
where
    E: std::fmt::Display,
    F: Future<Output = Result<(), E>> + Send + 'static,
{
    set.spawn(async move {
        fut.await.map_err(|e| OperatorError::Controller {
            name,
            message: e.to_string(),
        })
    });
}

/// Waits for SIGTERM or Ctrl-C.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Time limits of a stop, derived from `--shutdown-timeout-seconds`.
#[derive(Clone, Copy, Debug)]
struct StopBudget {
    /// From the signal to the hard exit.
    total: Duration,
    /// Reserved for releasing the Lease and closing the HTTP server.
    release: Duration,
}

impl StopBudget {
    fn new(total: Duration, lease_attempt: Duration) -> Self {
        StopBudget {
            total,
            release: lease_attempt.min(total / 3),
        }
    }

    /// How long the controllers may take to stop, counted from the signal.
    fn controllers(&self) -> Duration {
        self.total
            .saturating_sub(self.release)
            .saturating_sub(Duration::from_millis(500))
    }
}

async fn operate(args: OperatorArgs) -> Result<(), OperatorError> {
    let lease_cfg = leader::LeaseConfig {
        name: args.leader_election_id.clone(),
        namespace: args
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        identity: args
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("berth-{}", crate::plan::wiring::random_hex(4))),
        lease_duration: Duration::from_secs(args.lease_duration_seconds),
        renew_deadline: Duration::from_secs(args.renew_deadline_seconds),
        retry_period: Duration::from_secs(args.retry_period_seconds),
    };
    let budget = StopBudget::new(
        Duration::from_secs(args.shutdown_timeout_seconds),
        lease_cfg.attempt_timeout(),
    );
    let fence = if args.leader_elect {
        Fence::closed()
    } else {
        Fence::open()
    };
    let (client, lease_client) = clients(fence.clone(), lease_cfg.attempt_timeout()).await?;

    let shutdown = CancellationToken::new();
    // When the signal came: the controllers' stop deadline counts from it.
    let signalled: Arc<Mutex<Option<Instant>>> = Arc::default();
    {
        let (shutdown, signalled) = (shutdown.clone(), signalled.clone());
        let total = budget.total;
        tokio::spawn(async move {
            signal().await;
            *signalled.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            info!(within = ?total, "signal received: stopping");
            shutdown.cancel();
            // The last resort, on a thread of its own so a stuck runtime cannot hold it.
            std::thread::spawn(move || {
                std::thread::sleep(total);
                error!(within = ?total, "did not stop within the shutdown timeout: exiting now");
                std::process::exit(i32::from(exit::INVALID));
            });
        });
    }

    // Every metric is registered before the registry is served.
    let mut registry = Registry::default();
    let leader_gauge = Gauge::<i64>::default();
    registry.register(
        "berth_leader",
        "1 while this replica holds the leader Lease and runs the controllers",
        leader_gauge.clone(),
    );
    fence.register(&mut registry);
    crate::heap::register(&mut registry);
    let crd_metrics = CrdMetrics::register(&mut registry);
    let appstack_metrics = Arc::new(controller::Metrics::register(&mut registry));
    // The Worker and Backup controllers run under the same Lease, each with its own metrics.
    let worker_metrics = Arc::new(crate::workers::Metrics::register(&mut registry));
    let backup_metrics = Arc::new(crate::backup::kube::controller::Metrics::register(
        &mut registry,
    ));
    let synced = [
        ("AppStack", Synced::default()),
        ("Worker", Synced::default()),
        ("Backup", Synced::default()),
    ];
    let cert_metrics = Arc::new(crate::cert::kube::controller::Metrics::register(
        &mut registry,
    ));

    let state = Arc::new(HttpState {
        registry,
        stopping: AtomicBool::new(false),
        crd_problems: Mutex::new(None),
        leading: AtomicBool::new(false),
        synced: synced.to_vec(),
    });
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| OperatorError::Listen {
            addr: args.http_addr,
            source,
        })?;
    info!(addr = %args.http_addr, "serving /healthz, /readyz, /metrics");
    // Stopped last, after the Lease is released: /readyz answers "stopping" meanwhile.
    let http_stop = CancellationToken::new();
    let http = {
        let stop = http_stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    };

    let (crds_ok_tx, mut crds_ok) = tokio::sync::watch::channel(false);
    let crd_task = tokio::spawn(watch_crds(
        client.clone(),
        state.clone(),
        crd_metrics,
        crds_ok_tx,
        shutdown.clone(),
    ));

    let result = lead_and_run(
        &args,
        lease_cfg,
        lease_client,
        client,
        fence,
        &state,
        &mut crds_ok,
        &synced,
        [appstack_metrics.clone()],
        worker_metrics,
        backup_metrics,
        cert_metrics,
        &leader_gauge,
        &shutdown,
        &signalled,
        budget,
    )
    .await;

    state.stopping.store(true, Ordering::SeqCst);
    shutdown.cancel();
    crd_task.abort();
    http_stop.cancel();
    // Open connections (a scraper's keep-alive) must not hold the exit.
    let mut http = http;
    if tokio::time::timeout(Duration::from_millis(300), &mut http)
        .await
        .is_err()
    {
        http.abort();
    }
    info!("stopped");
    result
}

/// Waits to lead, then for the CRDs, then runs the controllers until a signal, a lost Lease or
/// a controller's error; stops them within the budget and releases the Lease.
#[allow(clippy::too_many_arguments)]
async fn lead_and_run(
    args: &OperatorArgs,
    lease_cfg: leader::LeaseConfig,
    lease_client: kube::Client,
    client: kube::Client,
    fence: Arc<Fence>,
    state: &Arc<HttpState>,
    crds_ok: &mut tokio::sync::watch::Receiver<bool>,
    synced: &[(&'static str, Synced); 3],
    [appstack_metrics]: [Arc<controller::Metrics>; 1],
    worker_metrics: Arc<crate::workers::Metrics>,
    backup_metrics: Arc<crate::backup::kube::controller::Metrics>,
    cert_metrics: Arc<crate::cert::kube::controller::Metrics>,
    leader_gauge: &Gauge<i64>,
    shutdown: &CancellationToken,
    signalled: &Arc<Mutex<Option<Instant>>>,
    budget: StopBudget,
) -> Result<(), OperatorError> {
    let identity = lease_cfg.identity.clone();
    // `lost` is cancelled by the elector; `release` tells it to give the Lease up.
    let lost = CancellationToken::new();
    let release = CancellationToken::new();
    let mut lease_task = None;
    if args.leader_elect {
        info!(identity, lease = %lease_cfg.name, namespace = %lease_cfg.namespace, "waiting to lead");
        let mut elector = leader::Elector::new(lease_client, lease_cfg).with_fence(fence);
        if !elector.acquire(shutdown).await {
            return Ok(());
        }
        let (r, l) = (release.clone(), lost.clone());
        lease_task = Some(tokio::spawn(async move { elector.keep(r, l).await }));
    }
    leader_gauge.set(1);
    state.leading.store(true, Ordering::SeqCst);

    let result = run_controllers(
        args,
        client,
        identity,
        crds_ok,
        synced,
        appstack_metrics,
        worker_metrics,
        backup_metrics,
        cert_metrics,
        shutdown,
        &lost,
        signalled,
        budget,
    )
    .await;

    leader_gauge.set(0);
    state.stopping.store(true, Ordering::SeqCst);
    let mut result = result;
    if lost.is_cancelled() {
        result = result.and(Err(OperatorError::LostLease));
    }
    // Releases the Lease (bounded by the elector's attempt timeout): the standby takes over.
    release.cancel();
    if let Some(mut t) = lease_task {
        if tokio::time::timeout(budget.release, &mut t).await.is_err() {
            warn!("releasing the Lease took too long: leaving it to expire");
            t.abort();
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_controllers(
    args: &OperatorArgs,
    client: kube::Client,
    identity: String,
    crds_ok: &mut tokio::sync::watch::Receiver<bool>,
    synced: &[(&'static str, Synced); 3],
    appstack_metrics: Arc<controller::Metrics>,
    worker_metrics: Arc<crate::workers::Metrics>,
    backup_metrics: Arc<crate::backup::kube::controller::Metrics>,
    cert_metrics: Arc<crate::cert::kube::controller::Metrics>,
    shutdown: &CancellationToken,
    lost: &CancellationToken,
    signalled: &Arc<Mutex<Option<Instant>>>,
    budget: StopBudget,
) -> Result<(), OperatorError> {
    // The controllers start once every CRD is served and current (no restart needed).
    if !*crds_ok.borrow() {
        info!("waiting for berth's CRDs before starting the controllers");
    }
    loop {
        if *crds_ok.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = lost.cancelled() => return Ok(()),
            changed = crds_ok.changed() => if changed.is_err() { return Ok(()) },
        }
    }

    // `work` stops the controllers: on a signal, when the lease is lost, or when one stops.
    let work = shutdown.child_token();
    let settings = controller::Settings {
        namespace: args.namespace.clone(),
        build: BuildOptions {
            ingress: IngressOptions {
                class_name: Some(args.ingress_class.clone()),
                controller_namespace: args.ingress_namespace.clone(),
            },
        },
        instance: Some(identity),
    };
    // One watch and one cache per berth kind, shared by the controllers that read them.
    let shared = crate::shared::SharedWatches::new(&client, args.namespace.as_deref(), true);
    let mut controllers = JoinSet::new();
    spawn_controller(
        &mut controllers,
        "AppStack",
        controller::run_shared(
            client.clone(),
            settings,
            appstack_metrics,
            work.clone(),
            Some(synced[0].1.clone()),
            Some(shared.appstack),
        ),
    );
    spawn_controller(
        &mut controllers,
        "Worker",
        crate::workers::run_shared(
            client.clone(),
            args.namespace.clone(),
            worker_metrics,
            work.clone(),
            synced[1].1.clone(),
            args.redis_keyspace_notifications,
            Some(shared.workers),
        ),
    );
    spawn_controller(
        &mut controllers,
        "Backup",
        crate::backup::kube::controller::run_shared(
            client.clone(),
            args.namespace.clone(),
            backup_metrics,
            work.clone(),
            synced[2].1.clone(),
            Some(shared.backups),
        ),
    );
    spawn_controller(
        &mut controllers,
        "Certificate",
        crate::cert::kube::controller::run_shared(
            {
                let mut ctx =
                    crate::cert::kube::controller::Context::new(client.clone(), cert_metrics);
                ctx.jobs.ingress_class = Some(args.ingress_class.clone());
                ctx
            },
            args.namespace.clone(),
            work.clone(),
            shared.certificates,
        ),
    );

    let mut result = Ok(());
    let mut record = |done: Result<Result<(), OperatorError>, tokio::task::JoinError>| match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => result = std::mem::replace(&mut result, Ok(())).and(Err(e)),
        Err(join) if join.is_cancelled() => {}
        Err(join) => {
            result = std::mem::replace(&mut result, Ok(())).and(Err(OperatorError::Controller {
                name: "task",
                message: join.to_string(),
            }))
        }
    };
    // The first of: a signal, the lease lost, a controller stopped.
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = lost.cancelled() => {}
        done = controllers.join_next() => if let Some(done) = done { record(done) },
    }
    work.cancel();
    let since = signalled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_else(Instant::now);
    let deadline = tokio::time::Instant::from_std(since + budget.controllers());
    loop {
        match tokio::time::timeout_at(deadline, controllers.join_next()).await {
            Ok(Some(done)) => record(done),
            Ok(None) => break,
            Err(_) => {
                warn!(
                    controllers = controllers.len(),
                    "controllers did not stop in time: cancelling their reconciles"
                );
                controllers.abort_all();
                while controllers.join_next().await.is_some() {}
                break;
            }
        }
    }
    result
}
