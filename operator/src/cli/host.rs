//! `berth host run|status|down`: the manifests of a folder, on this Docker host.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};

use crate::backup::host::SystemClock;
use crate::docker::backups::{self, BackupHook};
use crate::docker::desired::{Kind, ObjectKey};
use crate::docker::run::{Host, HostOptions};
use crate::docker::state::{StateDir, DEFAULT_STATE_DIR};
use crate::docker::status::{self, ObjectStatus};
use crate::docker::{DEFAULT_INSTANCE, DEFAULT_PROXY_IMAGE};

use super::exit;

#[derive(Debug, Args)]
pub struct HostArgs {
    #[command(subcommand)]
    pub command: HostCommand,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Reconcile the host with the manifests until SIGTERM (driven by Docker events and
    /// manifest changes). The stacks keep running when berth stops.
    Run(RunArgs),
    /// Show the status of each object (the same shape as `.status` on Kubernetes).
    Status(StatusArgs),
    /// Remove the containers and networks berth made (volumes only with --volumes).
    Down(DownArgs),
}

#[derive(Debug, Args)]
pub struct Common {
    /// Where credentials, status and the proxy configuration are kept.
    #[arg(long, env = "BERTH_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Name of this berth host instance: label of everything it creates, prefix of the proxy.
    #[arg(long, env = "BERTH_INSTANCE", default_value = DEFAULT_INSTANCE)]
    pub instance: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The folder of manifests (AppStack, Worker, Certificate, Backup, v1 Secret).
    #[arg(long)]
    pub manifests: PathBuf,
    #[command(flatten)]
    pub common: Common,
    /// Where the proxy listens for HTTP on the host.
    #[arg(long, default_value = "0.0.0.0:80")]
    pub http_port: String,
    /// Where the proxy listens for HTTPS on the host.
    #[arg(long)]
    pub https_port: Option<String>,
    /// The proxy's image (nginx, with the official image's layout).
    #[arg(long, default_value = DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// Run one pass and exit (0 when nothing is left to do).
    #[arg(long)]
    pub once: bool,
    /// An empty manifests folder means "run nothing" (without it, an emptied folder removes
    /// nothing and berth says so).
    #[arg(long)]
    pub allow_empty: bool,
    /// Wake the autoscaler on Redis keyspace notifications where berth reaches the Redis
    /// directly (a stack's own Redis is read through `docker exec` and stays polled). See
    /// docs/autoscaling.md.
    #[arg(long, env = "BERTH_REDIS_KEYSPACE_NOTIFICATIONS")]
    pub redis_keyspace_notifications: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only the objects of these manifests (all known objects otherwise).
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[arg(long)]
    pub manifests: PathBuf,
    #[command(flatten)]
    pub common: Common,
    /// Also remove the data volumes (databases!).
    #[arg(long)]
    pub volumes: bool,
}

pub fn run(args: HostArgs) -> u8 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth host: cannot start the runtime: {e}");
            return exit::USAGE;
        }
    };
    match args.command {
        HostCommand::Run(a) => rt.block_on(run_host(a)),
        HostCommand::Status(a) => show_status(a),
        HostCommand::Down(a) => rt.block_on(down(a)),
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "berth=info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run_host(a: RunArgs) -> u8 {
    init_tracing();
    let keyspace = a.redis_keyspace_notifications;
    let opts = HostOptions {
        manifests: a.manifests,
        state_dir: a.common.state_dir,
        instance: a.common.instance,
        http: a.http_port,
        https: a.https_port,
        proxy_image: a.proxy_image,
        allow_empty: a.allow_empty,
    };
    let host = match Host::new(opts).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("berth host run: {e}");
            return exit::USAGE;
        }
    };
    let backups = BackupHook::new(
        &host.opts.manifests,
        &host.opts.instance,
        Arc::new(SystemClock),
        Some(host.waker()),
    );
    let host = host.with_hook(Arc::new(backups));
    let certs = crate::docker::certs::CertHook::for_host(
        &host.opts.manifests,
        &host.opts.http,
        Some(host.waker()),
    );
    let host = host.with_hook(Arc::new(certs));
    if a.once {
        return match host.pass().await {
            Ok(r) if !r.progressing => exit::OK,
            Ok(_) => exit::INVALID,
            Err(e) => {
                eprintln!("berth host run: {e}");
                exit::USAGE
            }
        };
    }
    // Workers with `scaling`: the autoscale engine decides their replica counts.
    let scaling = tokio_util::sync::CancellationToken::new();
    let mut host = crate::docker::autoscale::HostScaler::attach(host, scaling.clone(), keyspace);
    let _stop_scaling = scaling.drop_guard();
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    match host.run(shutdown).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("berth host run: {e}");
            exit::USAGE
        }
    }
}

fn show_status(a: StatusArgs) -> u8 {
    let state = match StateDir::open(&a.common.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth host status: {e}");
            return exit::USAGE;
        }
    };
    let mut all = status::read_all(&state);
    if let Some(dir) = &a.manifests {
        let docs = match crate::manifest::load_paths(std::slice::from_ref(dir)) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("berth host status: {e}");
                return exit::USAGE;
            }
        };
        let mut wanted: Vec<ObjectKey> = Vec::new();
        for d in &docs {
            let kind = match d.kind.as_deref() {
                Some("AppStack") => Kind::AppStack,
                Some("Worker") => Kind::Worker,
                _ => continue,
            };
            let Some(name) = d.name.clone() else { continue };
            if kind == Kind::AppStack {
                if let Ok(crate::manifest::Object::AppStack(s)) = &d.result {
                    for w in &s.spec.workers {
                        wanted.push(ObjectKey {
                            kind: Kind::Worker,
                            name: crate::plan::names::child_worker(&name, &w.name),
                        });
                    }
                }
            }
            wanted.push(ObjectKey { kind, name });
        }
        let backup_names = backups::host_backups(&docs);
        all.retain(|s| {
            wanted
                .iter()
                .any(|k| k.kind.as_str() == s.kind && k.name == s.name)
                || (s.kind == backups::KIND && backup_names.contains_key(&s.name))
                || s.kind == crate::docker::manifests::KIND
        });
    }
    match a.output {
        Output::Json => match serde_json::to_string_pretty(&all) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("berth host status: {e}");
                return exit::USAGE;
            }
        },
        Output::Table => print!("{}", table(&all)),
    }
    exit::OK
}

/// `KIND NAME PHASE READY MESSAGE`, then one indented line per component.
pub fn table(all: &[ObjectStatus]) -> String {
    let mut out = format!(
        "{:<10} {:<28} {:<12} {:<8} {}\n",
        "KIND", "NAME", "PHASE", "READY", "MESSAGE"
    );
    for s in all {
        let st = &s.status;
        let cond = |t: &str| {
            st["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == t))
                .cloned()
                .unwrap_or_default()
        };
        let ready = cond("Ready");
        let phase = st["phase"].as_str().map(str::to_string).unwrap_or_else(|| {
            match ready["status"].as_str() {
                Some("True") => "Ready".into(),
                _ => "NotReady".into(),
            }
        });
        let (r, d) = match s.kind.as_str() {
            "Worker" => (
                st["replicas"].as_i64().unwrap_or(0),
                st["desiredReplicas"].as_i64().unwrap_or(0),
            ),
            _ => st["components"]
                .as_array()
                .map(|c| {
                    (
                        c.iter()
                            .filter(|c| {
                                c["readyReplicas"].as_i64() >= c["desiredReplicas"].as_i64()
                            })
                            .count() as i64,
                        c.len() as i64,
                    )
                })
                .unwrap_or((0, 0)),
        };
        let mut message = ready["message"].as_str().unwrap_or("").to_string();
        for t in ["Degraded", "Progressing"] {
            let c = cond(t);
            if c["status"] == "True" {
                message = c["message"].as_str().unwrap_or("").to_string();
                break;
            }
        }
        if let Some(url) = st["url"].as_str() {
            if message.is_empty() {
                message = url.to_string();
            }
        }
        out.push_str(&format!(
            "{:<10} {:<28} {:<12} {:<8} {}\n",
            s.kind,
            s.name,
            phase,
            if s.kind == backups::KIND || s.kind == crate::docker::manifests::KIND {
                "-".to_string()
            } else {
                format!("{r}/{d}")
            },
            message
        ));
    }
    out
}

async fn down(a: DownArgs) -> u8 {
    init_tracing();
    let opts = HostOptions {
        manifests: a.manifests,
        state_dir: a.common.state_dir,
        instance: a.common.instance,
        http: String::new(),
        https: None,
        proxy_image: String::new(),
        allow_empty: false,
    };
    let host = match Host::unlocked(opts).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("berth host down: {e}");
            return exit::USAGE;
        }
    };
    match host.down(a.volumes).await {
        Ok(removed) => {
            for r in removed {
                println!("removed {r}");
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("berth host down: {e}");
            exit::USAGE
        }
    }
}
