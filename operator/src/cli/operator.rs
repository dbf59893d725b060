//! `berth operator`: runs berth's Kubernetes controllers in a cluster (or against KUBECONFIG),
//! behind a Lease so that only one replica reconciles, with /healthz, /readyz and /metrics on
//! one port, and a graceful stop on SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use clap::{Args, ValueEnum};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::exit;
use crate::controller::{self, leader};
use crate::k8s::network::IngressOptions;
use crate::k8s::BuildOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "BERTH_NAMESPACE")]
    pub namespace: Option<String>,
    /// `ingressClassName` of the Ingresses berth creates (ingress-nginx annotations are used).
    #[arg(long, default_value = "nginx")]
    pub ingress_class: String,
    /// Namespace of the ingress controller's pods, allowed to reach the api by NetworkPolicy.
    #[arg(long, default_value = "ingress-nginx")]
    pub ingress_namespace: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Log lines as text or JSON (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Elect a leader with a Lease so several replicas are safe; off only for a single replica
    /// or local development.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "berth-operator")]
    pub leader_election_id: String,
    /// Namespace of the Lease (default: the pod's namespace from POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// This replica's identity in the Lease (default: POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds the leader keeps trying to renew before it gives up leading.
    #[arg(long, default_value_t = 10)]
    pub renew_deadline_seconds: u64,
    /// Seconds between attempts to acquire or renew.
    #[arg(long, default_value_t = 2)]
    pub retry_period_seconds: u64,
}

/// Why the operator stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(
        "cannot connect to Kubernetes: {0}; run in a pod with a service account, or set KUBECONFIG"
    )]
    Client(kube::Error),
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("{}", OperatorError::Runtime(e));
            return exit::USAGE;
        }
    };
    match runtime.block_on(operate(args)) {
        Ok(()) => exit::OK,
        Err(e) => {
            error!("{e}");
            match e {
                OperatorError::Client(_) | OperatorError::Listen { .. } => exit::USAGE,
                _ => exit::INVALID,
            }
        }
    }
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

/// What /readyz and /metrics serve.
struct HttpState {
    registry: Registry,
    stopping: AtomicBool,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    if s.stopping.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else {
        (StatusCode::OK, "ok")
    }
}

async fn metrics(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
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

async fn operate(args: OperatorArgs) -> Result<(), OperatorError> {
    let client = kube::Client::try_default()
        .await
        .map_err(OperatorError::Client)?;
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            signal().await;
            info!("signal received: stopping");
            shutdown.cancel();
        });
    }

    // Every controller's metrics are registered before the registry is served.
    let mut registry = Registry::default();
    let leader_gauge = Gauge::<i64>::default();
    registry.register(
        "berth_leader",
        "1 while this replica holds the leader Lease and runs the controllers",
        leader_gauge.clone(),
    );
    let appstack_metrics = Arc::new(controller::Metrics::register(&mut registry));
    // The Worker and Backup controllers run under the same Lease, each with its own metrics.
    let worker_metrics = Arc::new(crate::workers::Metrics::register(&mut registry));
    let backup_metrics = Arc::new(crate::backup::kube::controller::Metrics::register(
        &mut registry,
    ));
    let cert_metrics = Arc::new(crate::cert::kube::controller::Metrics::register(
        &mut registry,
    ));

    let state = Arc::new(HttpState {
        registry,
        stopping: AtomicBool::new(false),
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
    let http = {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    };

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("berth-{}", crate::plan::wiring::random_hex(4)));
    // `work` stops the controllers: on a signal, or when the lease is lost.
    let work = shutdown.child_token();
    let lost = CancellationToken::new();
    let mut lease_task = None;
    if args.leader_elect {
        let cfg = leader::LeaseConfig {
            name: args.leader_election_id.clone(),
            namespace: args
                .leader_election_namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(args.lease_duration_seconds),
            renew_deadline: Duration::from_secs(args.renew_deadline_seconds),
            retry_period: Duration::from_secs(args.retry_period_seconds),
        };
        info!(identity, lease = %cfg.name, namespace = %cfg.namespace, "waiting to lead");
        let mut elector = leader::Elector::new(client.clone(), cfg);
        if !elector.acquire(&shutdown).await {
            state.stopping.store(true, Ordering::Relaxed);
            let _ = http.await;
            return Ok(());
        }
        let (s, l, w) = (shutdown.clone(), lost.clone(), work.clone());
        lease_task = Some(tokio::spawn(async move {
            elector.keep(s, l.clone()).await;
            if l.is_cancelled() {
                w.cancel();
            }
        }));
    }
    leader_gauge.set(1);

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
    let mut controllers = JoinSet::new();
    spawn_controller(
        &mut controllers,
        "AppStack",
        controller::run_with(client.clone(), settings, appstack_metrics, work.clone()),
    );
    // Every controller has the same shape `run(client, namespace, metrics, shutdown)`.
    spawn_controller(
        &mut controllers,
        "Worker",
        crate::workers::run(
            client.clone(),
            args.namespace.clone(),
            worker_metrics,
            work.clone(),
        ),
    );
    spawn_controller(
        &mut controllers,
        "Backup",
        crate::backup::kube::controller::run(
            client.clone(),
            args.namespace.clone(),
            backup_metrics,
            work.clone(),
        ),
    );
    spawn_controller(
        &mut controllers,
        "Certificate",
        crate::cert::kube::controller::run(
            client.clone(),
            args.namespace.clone(),
            cert_metrics,
            work.clone(),
        ),
    );

    // The first controller to stop (an error, or `work` cancelled) stops them all.
    let mut result = Ok(());
    while let Some(done) = controllers.join_next().await {
        work.cancel();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = result.and(Err(e)),
            Err(join) => {
                result = result.and(Err(OperatorError::Controller {
                    name: "task",
                    message: join.to_string(),
                }))
            }
        }
    }
    leader_gauge.set(0);
    state.stopping.store(true, Ordering::Relaxed);
    if lost.is_cancelled() {
        result = result.and(Err(OperatorError::LostLease));
    }
    // Releases the lease (the standby takes over at once) and stops serving.
    shutdown.cancel();
    if let Some(t) = lease_task {
        let _ = t.await;
    }
    let _ = http.await;
    info!("stopped");
    result
}
