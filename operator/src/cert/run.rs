//! One round of the engine against a state-dir [`FileStore`], ACME included: what
//! `berth cert renew --dir` and the Docker host's scheduler run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::acme::{self, AcmeRequest, Http01Tokens, SelfCheck};
use super::files::{write_private, FileStore};
use super::round::{self, CaPair};
use super::status::Outcome;
use super::timing::Decision;
use super::{CertError, KeyChoice};
use crate::api::{CertificateSpec, CertificateStatus};

/// Where the ACME account keys live under a state dir.
pub const ACCOUNTS_DIR: &str = ".acme-accounts";

/// How a round reaches the outside world.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The `berth.dev/renew-now` value (a new one means one attempt now).
    pub renew_now: Option<String>,
    /// A PEM root trusted for the ACME server's own HTTPS (test CAs).
    pub acme_server_root: Option<PathBuf>,
    /// Where HTTP-01 key authorizations are published (served by the caller).
    pub tokens: Http01Tokens,
    pub self_check: SelfCheck,
    /// How long the CA may take to validate and issue.
    pub acme_timeout: Option<Duration>,
}

/// What a round did.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub status: CertificateStatus,
    /// A new pair was stored (the proxy must reload).
    pub stored_new: bool,
    pub decision: Decision,
}

fn account_path(root: &Path, server: &str, email: &str) -> PathBuf {
    let key = crate::backup::kube::value_hash(&format!("{server}\n{email}"));
    root.join(ACCOUNTS_DIR).join(format!("{key}.json"))
}

/// Decides, issues when due (never touching the stored pair on failure) and writes the status.
pub async fn run(
    root: &Path,
    spec: &CertificateSpec,
    generation: Option<i64>,
    opts: &RunOptions,
    now: DateTime<Utc>,
) -> Result<RunResult, CertError> {
    let store = FileStore::new(root, &spec.secret_name);
    let previous = store.load_status()?;
    let stored = store.load()?;
    let before = round::read(stored.as_ref());
    let renew_now = opts.renew_now.as_deref();
    let decision = round::decide(spec, previous.as_ref(), before.as_ref(), renew_now, now)?;
    let Decision::Issue(reason) = decision else {
        let st = round::status_after(
            spec,
            generation,
            previous.as_ref(),
            before.as_ref(),
            renew_now,
            &Outcome::Waiting(decision),
            now,
        );
        if previous.as_ref() != Some(&st) {
            store.save_status(&st)?;
        }
        return Ok(RunResult {
            status: st,
            stored_new: false,
            decision,
        });
    };

    let result = issue(root, spec, stored.as_ref(), opts, now).await;
    let (after, err) = match result {
        Ok(issued) => {
            store.save(&issued)?;
            (round::read(store.load()?.as_ref()), None)
        }
        Err(e) => (before, Some(e)),
    };
    let outcome = match &err {
        None => Outcome::Issued(reason),
        Some(e) => Outcome::Failed(reason, e),
    };
    let st = round::status_after(
        spec,
        generation,
        previous.as_ref(),
        after.as_ref(),
        renew_now,
        &outcome,
        now,
    );
    store.save_status(&st)?;
    Ok(RunResult {
        status: st,
        stored_new: err.is_none(),
        decision,
    })
}

async fn issue(
    root: &Path,
    spec: &CertificateSpec,
    stored: Option<&round::Stored>,
    opts: &RunOptions,
    now: DateTime<Utc>,
) -> Result<super::Issued, CertError> {
    if let Some(a) = &spec.issuer.acme {
        let key = KeyChoice::of(spec).key(stored.map(|s| s.key_pem.as_str()))?;
        let path = account_path(root, &a.server, &a.email);
        let account = match std::fs::read_to_string(&path) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(CertError::io(format!("reading {}", path.display()))(e)),
        };
        let out = acme::issue(&AcmeRequest {
            server: &a.server,
            email: &a.email,
            dns_names: &spec.dns_names,
            key: &key,
            account: account.as_deref(),
            server_root: opts.acme_server_root.clone(),
            tokens: &opts.tokens,
            self_check: opts.self_check.clone(),
            timeout: opts.acme_timeout.unwrap_or(Duration::from_secs(90)),
        })
        .await?;
        if let Some(json) = out.new_account {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(CertError::io(format!("creating {}", dir.display())))?;
            }
            write_private(&path, json.as_bytes())?;
        }
        return Ok(out.issued);
    }
    if let Some(ca) = &spec.issuer.ca {
        let ca_store = FileStore::new(root, &ca.secret_name);
        let source = ca_store.dir().display().to_string();
        let bad = |detail: &str| CertError::BadCa {
            source_name: source.clone(),
            detail: detail.into(),
        };
        let cert =
            std::fs::read_to_string(ca_store.cert_path()).map_err(|_| bad("tls.crt is missing"))?;
        let key =
            std::fs::read_to_string(ca_store.key_path()).map_err(|_| bad("tls.key is missing"))?;
        return round::issue_local(
            spec,
            Some(&CaPair {
                cert_pem: &cert,
                key_pem: &key,
                source: &source,
            }),
            stored,
            now,
        );
    }
    round::issue_local(spec, None, stored, now)
}
