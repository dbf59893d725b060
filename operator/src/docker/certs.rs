//! HTTPS on a Docker host: the proxy's TLS configuration and the certificate renewal hook.
//!
//! Certificates live in the state dir under the proxy's configuration folder,
//! `<state>/proxy/conf.d/certs/<secretName>/` (files 0600; nginx's master reads them as root),
//! so the proxy container sees them without another mount. HTTP-01 answers are files under
//! `certs/acme/.well-known/acme-challenge/` that nginx serves on every site's port 80: berth
//! writes the answer, its own proxy serves it, nothing else listens.
//!
//! [`render`] wraps the proxy's plain rendering: a site whose certificate is stored and valid
//! gets a `listen 443 ssl` server with the same routes, and its port 80 answers only the
//! challenge path and redirects the rest to HTTPS. A site whose certificate is not there yet
//! stays on HTTP (its status says why): a missing or broken pair never reaches nginx, so one
//! stack's certificate cannot stop the proxy for the others. The serial is written into the
//! site's file, so a renewed certificate changes it and the proxy reloads gracefully.
//!
//! [`CertHook`] runs the engine's rounds after each pass (`cert::run`), wakes the loop at the
//! next renewal or backoff end, and writes `<state>/status/certificate-<name>.json`, which
//! `berth host status` shows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cert::acme::{Http01Tokens, SelfCheck, CHALLENGE_PREFIX};
use crate::cert::files::{certificates_of, FileStore, ManifestCert};
use crate::cert::round;
use crate::cert::run::{run as run_round, RunOptions};
use crate::cert::timing::Decision;
use crate::manifest::{self, LoadError};

use super::hook::{HostHook, PassContext};
use super::proxy::{self, Site};
use super::state::StateDir;
use super::status::ObjectStatus;

/// Where the proxy container sees the configuration folder.
const CONTAINER_CONF_DIR: &str = "/etc/nginx/conf.d";
/// The kind name of certificate status files.
pub const KIND: &str = "Certificate";

/// The certificate store of a host.
pub fn cert_root(state: &StateDir) -> PathBuf {
    state.proxy_conf_dir().join("certs")
}

/// The folder whose `.well-known/acme-challenge/` nginx serves.
pub fn webroot(state: &StateDir) -> PathBuf {
    cert_root(state).join("acme")
}

/// The served pair of a site, when it is stored, readable and not expired: its serial.
fn usable(root: &Path, secret: &str) -> Option<String> {
    let stored = FileStore::new(root, secret).load().ok()??;
    let info = round::read(Some(&stored))?.ok()?;
    (Utc::now() < info.not_after).then_some(info.serial_number)
}

fn challenge_location() -> String {
    format!(
        "    location ^~ {CHALLENGE_PREFIX} {{\n        root {CONTAINER_CONF_DIR}/certs/acme;\n        default_type text/plain;\n        try_files $uri =404;\n    }}\n"
    )
}

/// Adds TLS to the plain rendering of the proxy for the sites with a usable certificate.
pub fn render(sites: &[Site<'_>], root: &Path) -> BTreeMap<String, String> {
    let mut files = proxy::render(sites);
    for site in sites {
        let file = format!("{}.conf", site.stack);
        let Some(text) = files.get(&file) else {
            continue;
        };
        let secret = site.exposure.tls.as_ref().map(|t| t.secret_name.as_str());
        let serial = secret.and_then(|s| usable(root, s));
        let new = match (secret, serial) {
            (Some(secret), Some(serial)) => with_tls(text, &site.exposure.domain, secret, &serial),
            _ => with_challenge(text),
        };
        files.insert(file, new);
    }
    files
}

/// The plain site with the challenge path answered first.
fn with_challenge(text: &str) -> String {
    match text.split_once("    listen 80;\n") {
        Some((head, rest)) => format!("{head}    listen 80;\n{}{rest}", challenge_location()),
        None => text.to_string(),
    }
}

/// Port 80 redirects (except the challenge path); port 443 serves the site's routes.
fn with_tls(text: &str, domain: &str, secret: &str, serial: &str) -> String {
    let Some(at) = text.find("server {\n    listen 80;\n") else {
        return with_challenge(text);
    };
    let (head, server) = text.split_at(at);
    let dir = format!("{CONTAINER_CONF_DIR}/certs/{secret}");
    let https = server.replacen(
        "    listen 80;\n",
        &format!(
            "    listen 443 ssl;\n    ssl_certificate {dir}/tls.crt;\n    ssl_certificate_key {dir}/tls.key;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:berth_ssl:10m;\n    add_header Strict-Transport-Security \"max-age=31536000\" always;\n"
        ),
        1,
    );
    format!(
        "{head}# certificate serial {serial}\nserver {{\n    listen 80;\n    server_name {domain};\n{}    location / {{\n        return 308 https://$host$request_uri;\n    }}\n}}\n{https}",
        challenge_location()
    )
}

/// What the hook remembers between passes.
#[derive(Default)]
struct Inner {
    /// The earliest renewal or backoff end (a time, so unchanged rounds compare equal).
    next: Option<chrono::DateTime<Utc>>,
    running: bool,
}

/// Renews the host's Certificates after each pass.
#[derive(Clone)]
pub struct CertHook {
    manifests: PathBuf,
    opts: RunOptions,
    wake: Option<mpsc::UnboundedSender<()>>,
    inner: Arc<Mutex<Inner>>,
}

impl CertHook {
    /// Certificates of `manifests`; `acme_ca_bundle` trusts a test ACME server's HTTPS;
    /// `self_check_via` is where the HTTP-01 self-check connects (the proxy's HTTP port; by
    /// default the domain itself).
    pub fn new(
        manifests: &Path,
        acme_ca_bundle: Option<PathBuf>,
        self_check: SelfCheck,
        wake: Option<mpsc::UnboundedSender<()>>,
    ) -> CertHook {
        CertHook {
            manifests: manifests.to_path_buf(),
            opts: RunOptions {
                acme_server_root: acme_ca_bundle,
                self_check,
                ..RunOptions::default()
            },
            wake,
            inner: Arc::default(),
        }
    }

    /// The hook of `berth host run`: the self-check goes through the proxy's HTTP port;
    /// `BERTH_ACME_CA_BUNDLE` names a PEM CA to trust for a test ACME server's HTTPS.
    /// `manifests` is the manifest folder, `http` the proxy's HTTP address (`host:port`).
    pub fn for_host(
        manifests: &Path,
        http: &str,
        wake: Option<mpsc::UnboundedSender<()>>,
    ) -> CertHook {
        let port = http.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        let self_check = match port {
            Some(p) => SelfCheck::Via(std::net::SocketAddr::from(([127, 0, 0, 1], p))),
            None => SelfCheck::Dns,
        };
        let bundle = std::env::var_os("BERTH_ACME_CA_BUNDLE").map(PathBuf::from);
        CertHook::new(manifests, bundle, self_check, wake)
    }

    fn certificates(&self) -> Vec<ManifestCert> {
        match manifest::load_paths(std::slice::from_ref(&self.manifests)) {
            Ok(d) => certificates_of(&d),
            Err(LoadError::EmptyDir { .. }) => Vec::new(),
            Err(e) => {
                warn!(error = %e, "certificates: cannot read the manifests");
                Vec::new()
            }
        }
    }

    /// One round for every Certificate; true when a new pair was stored.
    pub async fn round(&self, state: &StateDir) -> bool {
        let root = cert_root(state);
        let tokens = Http01Tokens::in_dir(webroot(state));
        let opts = RunOptions {
            tokens,
            ..self.opts.clone()
        };
        let mut stored = false;
        let mut next: Option<chrono::DateTime<Utc>> = None;
        for ManifestCert {
            name,
            spec,
            generation,
            renew_now,
        } in self.certificates()
        {
            let opts = RunOptions {
                renew_now,
                ..opts.clone()
            };
            match run_round(&root, &spec, generation, &opts, Utc::now()).await {
                Ok(r) => {
                    if r.stored_new {
                        info!(certificate = %name, serial = ?r.status.serial_number, "certificate stored");
                        stored = true;
                    }
                    if let Decision::Wait { until, .. } = r.decision {
                        next = Some(next.map_or(until, |n| n.min(until)));
                    }
                    let doc = ObjectStatus {
                        kind: KIND.into(),
                        name: name.clone(),
                        status: serde_json::to_value(&r.status).unwrap_or_default(),
                    };
                    let path = state.status_dir().join(format!("certificate-{name}.json"));
                    let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
                    if let Err(e) = state.write_if_changed(&path, &bytes) {
                        warn!(error = %e, "certificates: cannot write the status");
                    }
                }
                Err(e) => warn!(certificate = %name, error = %e, "certificate round failed"),
            }
        }
        if let Ok(mut i) = self.inner.lock() {
            i.next = next;
        }
        stored
    }
}

impl HostHook for CertHook {
    /// Runs a round in the background (an ACME order may take a while; the host loop goes on)
    /// unless one is running. When it stored a new pair or moved the next wake-up, it wakes the
    /// loop: the next pass renders the new serial and reloads the proxy.
    fn after_pass<'a>(&'a self, ctx: PassContext<'a>) -> BoxFuture<'a, ()> {
        let state = ctx.state.clone();
        let this = self.clone();
        async move {
            let before = match this.inner.lock() {
                Ok(mut i) if !i.running => {
                    i.running = true;
                    i.next
                }
                _ => return,
            };
            tokio::spawn(async move {
                let stored = this.round(&state).await;
                let after = match this.inner.lock() {
                    Ok(mut i) => {
                        i.running = false;
                        i.next
                    }
                    Err(_) => None,
                };
                if stored || after != before {
                    if let Some(w) = &this.wake {
                        let _ = w.send(());
                    }
                }
            });
        }
        .boxed()
    }

    fn next_wake(&self) -> Option<Instant> {
        let at = self.inner.lock().ok()?.next?;
        Some(Instant::now() + (at - Utc::now()).to_std().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests;
