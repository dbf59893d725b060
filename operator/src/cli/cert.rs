//! `berth cert renew|status`: the certificate engine on the command line, over a state dir
//! (`<dir>/<secretName>/tls.crt|tls.key|ca.crt|status.json`). The Docker host's scheduler runs
//! the same rounds; `renew` renews only what is due (or named by `--renew-now`).
//! `berth cert renew --kube --namespace NS --name NAME` runs the same round against the
//! Kubernetes API (what the ACME renewal Jobs run, in-cluster).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::exit;
use crate::cert::acme::{http01_router, SelfCheck};
use crate::cert::files::{certificates_of, FileStore, ManifestCert};
use crate::cert::kube::renew::{renew as kube_renew, KubeRenew};
use crate::cert::run::{run as run_round, RunOptions, RunResult};
use crate::cert::timing::Decision;

#[derive(Debug, Args)]
pub struct CertArgs {
    #[command(subcommand)]
    pub command: CertCommand,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue or renew the Certificates of manifests that are due (or named by --renew-now).
    Renew(RenewArgs),
    /// Show the stored certificates and their status.
    Status(StatusArgs),
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Manifest files or folders with Certificates (and AppStacks with tls.issuer); required
    /// without --kube.
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// The state dir holding one folder per certificate (created 0700, files 0600); required
    /// without --kube.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Only this Certificate.
    #[arg(long)]
    pub name: Option<String>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub common: Common,
    /// A berth.dev/renew-now value: a new one makes one attempt now, whatever the backoff.
    #[arg(long, value_name = "VALUE")]
    pub renew_now: Option<String>,
    /// A PEM CA bundle to trust for the ACME server's HTTPS (test CAs such as Pebble's).
    #[arg(long, env = "BERTH_ACME_CA_BUNDLE", value_name = "PEM")]
    pub acme_ca_bundle: Option<PathBuf>,
    /// Serve HTTP-01 challenges here while issuing (the proxy forwards
    /// /.well-known/acme-challenge/ to it).
    #[arg(long, default_value = "0.0.0.0:8089")]
    pub http01_listen: SocketAddr,
    /// Self-check the challenge through this address instead of the domain's DNS (with --kube:
    /// instead of the solver Service's ClusterIP; "off" skips it).
    #[arg(long, value_name = "ADDR|off")]
    pub self_check_via: Option<String>,
    /// Renew the Certificate --name of --namespace through the Kubernetes API (in-cluster or
    /// KUBECONFIG): its TLS Secret, ACME account Secret and status; HTTP-01 is served here
    /// behind a temporary Service and Ingress.
    #[arg(long)]
    pub kube: bool,
    /// The Certificate's namespace (with --kube; default: POD_NAMESPACE, else "default").
    #[arg(long, requires = "kube")]
    pub namespace: Option<String>,
    /// ingressClassName of the solver Ingress (with --kube).
    #[arg(long, requires = "kube")]
    pub ingress_class: Option<String>,
    /// Issue now whatever the timing says (the Job the controller starts at once).
    #[arg(long)]
    pub now: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: CertArgs) -> u8 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth cert: cannot start the runtime: {e}");
            return exit::USAGE;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    match args.command {
        CertCommand::Renew(a) => rt.block_on(renew(a)),
        CertCommand::Status(a) => status(a),
    }
}

fn dir(c: &Common) -> Result<&std::path::Path, u8> {
    c.dir.as_deref().ok_or_else(|| {
        eprintln!("berth cert: --dir is required (the state dir), or --kube");
        exit::USAGE
    })
}

fn load(c: &Common) -> Result<Vec<ManifestCert>, u8> {
    if c.files.is_empty() {
        eprintln!("berth cert: -f/--file is required (manifests with Certificates), or --kube");
        return Err(exit::USAGE);
    }
    let docs = crate::manifest::load_paths(&c.files).map_err(|e| {
        eprintln!("berth cert: {e}");
        exit::USAGE
    })?;
    for d in &docs {
        for line in d.error_lines() {
            eprintln!("{line}");
        }
    }
    let certs: Vec<_> = certificates_of(&docs)
        .into_iter()
        .filter(|m| c.name.as_deref().is_none_or(|want| want == m.name))
        .collect();
    if certs.is_empty() {
        eprintln!(
            "berth cert: no Certificate{} in the manifests",
            c.name
                .as_deref()
                .map(|n| format!(" named {n}"))
                .unwrap_or_default()
        );
        return Err(exit::INVALID);
    }
    Ok(certs)
}

async fn renew(a: RenewArgs) -> u8 {
    let self_check = match a.self_check_via.as_deref() {
        None => SelfCheck::Dns,
        Some("off") => SelfCheck::Off,
        Some(addr) => match addr.parse() {
            Ok(a) => SelfCheck::Via(a),
            Err(e) => {
                eprintln!("berth cert renew: --self-check-via {addr:?}: {e}");
                return exit::USAGE;
            }
        },
    };
    let opts = RunOptions {
        renew_now: a.renew_now.clone(),
        acme_server_root: a.acme_ca_bundle.clone(),
        self_check,
        acme_timeout: Some(Duration::from_secs(120)),
        issue_now: a.now,
        ..RunOptions::default()
    };
    if a.kube {
        return renew_kube(&a, opts).await;
    }
    let certs = match load(&a.common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let root = match dir(&a.common) {
        Ok(d) => d,
        Err(code) => return code,
    };
    // The HTTP-01 answers are served only while ACME certificates are being issued.
    let mut server = None;
    if certs.iter().any(|m| m.spec.issuer.acme.is_some()) {
        match serve_http01(a.http01_listen, &opts).await {
            Ok(s) => server = Some(s),
            Err(code) => return code,
        }
    }
    let mut code = exit::OK;
    let mut out = Vec::new();
    for m in &certs {
        let (name, spec, generation) = (&m.name, &m.spec, m.generation);
        // The flag wins over the manifest's annotation.
        let opts = RunOptions {
            renew_now: a.renew_now.clone().or_else(|| m.renew_now.clone()),
            ..opts.clone()
        };
        match run_round(root, spec, generation, &opts, chrono::Utc::now()).await {
            Ok(r) => {
                let (what, failed) = describe(&r);
                if failed {
                    code = exit::INVALID;
                }
                out.push((name.clone(), what, r.status));
            }
            Err(e) => {
                eprintln!("berth cert renew: {name}: {e}");
                code = exit::USAGE;
            }
        }
    }
    if let Some(s) = server {
        s.abort();
    }
    print(a.common.output, &out);
    code
}

/// Serves HTTP-01 answers from `opts.tokens` on `listen` until aborted.
async fn serve_http01(
    listen: SocketAddr,
    opts: &RunOptions,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, u8> {
    match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => {
            let app = http01_router(opts.tokens.clone());
            Ok(tokio::spawn(async move { axum::serve(l, app).await }))
        }
        Err(e) => {
            eprintln!("berth cert renew: cannot listen on {listen} for HTTP-01: {e}");
            Err(exit::USAGE)
        }
    }
}

/// `berth cert renew --kube`: one round for one Certificate through the API.
async fn renew_kube(a: &RenewArgs, opts: RunOptions) -> u8 {
    let Some(name) = a.common.name.clone() else {
        eprintln!("berth cert renew --kube: --name is required (the Certificate)");
        return exit::USAGE;
    };
    let ns = a
        .namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "berth cert renew --kube: no Kubernetes API ({e}); run in a pod or set KUBECONFIG"
            );
            return exit::USAGE;
        }
    };
    let server = match serve_http01(a.http01_listen, &opts).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let how = KubeRenew {
        opts,
        ingress_class: a.ingress_class.clone(),
    };
    let result = kube_renew(client, &ns, &name, &how).await;
    server.abort();
    match result {
        Ok(r) => {
            let (what, failed) = describe(&r);
            print(a.common.output, &[(name, what, r.status)]);
            if failed {
                exit::INVALID
            } else {
                exit::OK
            }
        }
        Err(e) => {
            eprintln!("berth cert renew --kube: {ns}/{name}: {e}");
            exit::USAGE
        }
    }
}

/// What a round did, and whether it was a failed attempt.
fn describe(r: &RunResult) -> (String, bool) {
    let at =
        |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match (r.decision, r.stored_new) {
        (Decision::Issue(reason), true) => (format!("issued ({})", reason.reason()), false),
        (Decision::Issue(reason), false) => (format!("failed ({})", reason.reason()), true),
        (
            Decision::Wait {
                until,
                backing_off: None,
            },
            _,
        ) => (format!("not due before {}", at(&until)), false),
        (
            Decision::Wait {
                until,
                backing_off: Some(_),
            },
            _,
        ) => (format!("backing off until {}", at(&until)), false),
    }
}

fn status(a: StatusArgs) -> u8 {
    let certs = match load(&a.common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut out = Vec::new();
    for m in &certs {
        let (name, spec) = (&m.name, &m.spec);
        let store = match dir(&a.common) {
            Ok(root) => FileStore::new(root, &spec.secret_name),
            Err(code) => return code,
        };
        match store.load_status() {
            Ok(st) => out.push((name.clone(), String::new(), st.unwrap_or_default())),
            Err(e) => {
                eprintln!("berth cert status: {name}: {e}");
                return exit::USAGE;
            }
        }
    }
    print(a.common.output, &out);
    exit::OK
}

fn print(output: Output, rows: &[(String, String, crate::api::CertificateStatus)]) {
    match output {
        Output::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|(n, what, st)| serde_json::json!({"name": n, "result": what, "status": st}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Table => {
            println!(
                "{:<24} {:<6} {:<22} {:<26} {:<26} {:>6}  MESSAGE",
                "NAME", "READY", "REASON", "EXPIRES", "RENEWAL", "FAILS"
            );
            for (n, what, st) in rows {
                let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
                let msg = if what.is_empty() {
                    ready.map(|c| c.message.clone()).unwrap_or_default()
                } else {
                    what.clone()
                };
                println!(
                    "{:<24} {:<6} {:<22} {:<26} {:<26} {:>6}  {}",
                    n,
                    ready.map(|c| c.status.as_str()).unwrap_or("-"),
                    ready.map(|c| c.reason.as_str()).unwrap_or("NotIssued"),
                    st.not_after
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .unwrap_or_else(|| "-".into()),
                    st.renewal_time
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .unwrap_or_else(|| "-".into()),
                    st.failed_attempts,
                    msg
                );
            }
        }
    }
}
