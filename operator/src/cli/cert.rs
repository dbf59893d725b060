//! `berth cert renew|status`: the certificate engine on the command line, over a state dir
//! (`<dir>/<secretName>/tls.crt|tls.key|ca.crt|status.json`). The Docker host's scheduler runs
//! the same rounds; `renew` renews only what is due (or named by `--renew-now`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::exit;
use crate::cert::acme::{http01_router, SelfCheck};
use crate::cert::files::{certificates_of, FileStore, ManifestCert};
use crate::cert::run::{run as run_round, RunOptions};
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
    /// Manifest files or folders with Certificates (and AppStacks with tls.issuer).
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// The state dir holding one folder per certificate (created 0700, files 0600).
    #[arg(long)]
    pub dir: PathBuf,
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
    /// Self-check the challenge through this address instead of the domain's DNS ("off" skips it).
    #[arg(long, value_name = "ADDR|off")]
    pub self_check_via: Option<String>,
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

fn load(c: &Common) -> Result<Vec<ManifestCert>, u8> {
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
    let certs = match load(&a.common) {
        Ok(c) => c,
        Err(code) => return code,
    };
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
        ..RunOptions::default()
    };
    // The HTTP-01 answers are served only while ACME certificates are being issued.
    let mut server = None;
    if certs.iter().any(|m| m.spec.issuer.acme.is_some()) {
        match tokio::net::TcpListener::bind(a.http01_listen).await {
            Ok(l) => {
                let app = http01_router(opts.tokens.clone());
                server = Some(tokio::spawn(async move { axum::serve(l, app).await }));
            }
            Err(e) => {
                eprintln!(
                    "berth cert renew: cannot listen on {} for HTTP-01: {e}",
                    a.http01_listen
                );
                return exit::USAGE;
            }
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
        match run_round(&a.common.dir, spec, generation, &opts, chrono::Utc::now()).await {
            Ok(r) => {
                let failed = matches!(r.decision, Decision::Issue(_)) && !r.stored_new;
                if failed {
                    code = exit::INVALID;
                }
                let what = match (r.decision, r.stored_new) {
                    (Decision::Issue(reason), true) => format!("issued ({})", reason.reason()),
                    (Decision::Issue(reason), false) => format!("failed ({})", reason.reason()),
                    (
                        Decision::Wait {
                            until,
                            backing_off: None,
                        },
                        _,
                    ) => format!(
                        "not due before {}",
                        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    (
                        Decision::Wait {
                            until,
                            backing_off: Some(_),
                        },
                        _,
                    ) => format!(
                        "backing off until {}",
                        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                };
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

fn status(a: StatusArgs) -> u8 {
    let certs = match load(&a.common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut out = Vec::new();
    for m in &certs {
        let (name, spec) = (&m.name, &m.spec);
        let store = FileStore::new(&a.common.dir, &spec.secret_name);
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
