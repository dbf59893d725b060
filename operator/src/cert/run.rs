//! One round of the engine against a [`Store`], ACME included: what `berth cert renew --dir`
//! and the Docker host's scheduler run over a state dir ([`DirStore`]), and what
//! `berth cert renew --kube` runs over the Kubernetes API (`cert::kube::renew`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::acme::{self, AcmeRequest, Http01Tokens, Presenter, SelfCheck};
use super::files::{write_private, FileStore};
use super::round::{self, CaPair, Stored};
use super::status::Outcome;
use super::timing::{Decision, DueReason};
use super::{CertError, Issued, KeyChoice};
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
    /// Routes each challenge to the answer before the self-check (Kubernetes' solver).
    pub presenter: Option<Arc<dyn Presenter>>,
    /// Issue in this round whatever the timing says: the caller already decided (the Job the
    /// Kubernetes controller starts at once for a first issuance or a renew-now value, whose
    /// value the controller's status has already recorded).
    pub issue_now: bool,
}

/// What a round did.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub status: CertificateStatus,
    /// A new pair was stored (the proxy must reload).
    pub stored_new: bool,
    pub decision: Decision,
}

/// Where a backend keeps one Certificate's pair, its status, the ACME accounts and CA pairs.
/// A pair is saved only whole and only after a successful issuance.
pub trait Store: Sync {
    fn load(&self) -> impl Future<Output = Result<Option<Stored>, CertError>> + Send;
    fn save(&self, issued: &Issued) -> impl Future<Output = Result<(), CertError>> + Send;
    fn load_status(
        &self,
    ) -> impl Future<Output = Result<Option<CertificateStatus>, CertError>> + Send;
    /// Writes `status` (the store may skip it when equal to `previous`).
    fn save_status(
        &self,
        previous: Option<&CertificateStatus>,
        status: &CertificateStatus,
    ) -> impl Future<Output = Result<(), CertError>> + Send;
    /// The stored ACME account credentials (JSON) for this server and contact.
    fn load_account(
        &self,
        server: &str,
        email: &str,
    ) -> impl Future<Output = Result<Option<String>, CertError>> + Send;
    fn save_account(
        &self,
        server: &str,
        email: &str,
        json: &str,
    ) -> impl Future<Output = Result<(), CertError>> + Send;
    /// A `ca` issuer's pair: `(tls.crt, tls.key, where it came from)`.
    fn load_ca(
        &self,
        secret_name: &str,
    ) -> impl Future<Output = Result<(String, String, String), CertError>> + Send;
}

/// The state-dir store of the Docker host and `berth cert renew --dir`.
pub struct DirStore {
    root: PathBuf,
    files: FileStore,
}

impl DirStore {
    pub fn new(root: &Path, secret_name: &str) -> DirStore {
        DirStore {
            root: root.to_path_buf(),
            files: FileStore::new(root, secret_name),
        }
    }

    fn account_path(&self, server: &str, email: &str) -> PathBuf {
        let key = crate::backup::kube::value_hash(&format!("{server}\n{email}"));
        self.root.join(ACCOUNTS_DIR).join(format!("{key}.json"))
    }
}

impl Store for DirStore {
    async fn load(&self) -> Result<Option<Stored>, CertError> {
        self.files.load()
    }
    async fn save(&self, issued: &Issued) -> Result<(), CertError> {
        self.files.save(issued)
    }
    async fn load_status(&self) -> Result<Option<CertificateStatus>, CertError> {
        self.files.load_status()
    }
    async fn save_status(
        &self,
        previous: Option<&CertificateStatus>,
        status: &CertificateStatus,
    ) -> Result<(), CertError> {
        if previous == Some(status) {
            return Ok(());
        }
        self.files.save_status(status)
    }
    async fn load_account(&self, server: &str, email: &str) -> Result<Option<String>, CertError> {
        let path = self.account_path(server, email);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CertError::io(format!("reading {}", path.display()))(e)),
        }
    }
    async fn save_account(&self, server: &str, email: &str, json: &str) -> Result<(), CertError> {
        let path = self.account_path(server, email);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(CertError::io(format!("creating {}", dir.display())))?;
        }
        write_private(&path, json.as_bytes())
    }
    async fn load_ca(&self, secret_name: &str) -> Result<(String, String, String), CertError> {
        let ca_store = FileStore::new(&self.root, secret_name);
        let source = ca_store.dir().display().to_string();
        let bad = |detail: &str| CertError::BadCa {
            source_name: source.clone(),
            detail: detail.into(),
        };
        let cert =
            std::fs::read_to_string(ca_store.cert_path()).map_err(|_| bad("tls.crt is missing"))?;
        let key =
            std::fs::read_to_string(ca_store.key_path()).map_err(|_| bad("tls.key is missing"))?;
        Ok((cert, key, source))
    }
}

/// One round over a state dir (see [`round_in`]).
pub async fn run(
    root: &Path,
    spec: &CertificateSpec,
    generation: Option<i64>,
    opts: &RunOptions,
    now: DateTime<Utc>,
) -> Result<RunResult, CertError> {
    round_in(
        &DirStore::new(root, &spec.secret_name),
        spec,
        generation,
        opts,
        now,
    )
    .await
}

/// Decides, issues when due (never touching the stored pair on failure) and writes the status.
pub async fn round_in<S: Store>(
    store: &S,
    spec: &CertificateSpec,
    generation: Option<i64>,
    opts: &RunOptions,
    now: DateTime<Utc>,
) -> Result<RunResult, CertError> {
    let previous = store.load_status().await?;
    let stored = store.load().await?;
    let before = round::read(stored.as_ref());
    let renew_now = opts.renew_now.as_deref();
    let decision = match round::decide(spec, previous.as_ref(), before.as_ref(), renew_now, now)? {
        Decision::Wait { .. } if opts.issue_now => Decision::Issue(DueReason::RenewNow),
        d => d,
    };
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
        store.save_status(previous.as_ref(), &st).await?;
        return Ok(RunResult {
            status: st,
            stored_new: false,
            decision,
        });
    };

    let result = issue(store, spec, stored.as_ref(), opts, now).await;
    let (after, err) = match result {
        Ok(issued) => {
            store.save(&issued).await?;
            (round::read(store.load().await?.as_ref()), None)
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
    store.save_status(None, &st).await?;
    Ok(RunResult {
        status: st,
        stored_new: err.is_none(),
        decision,
    })
}

async fn issue<S: Store>(
    store: &S,
    spec: &CertificateSpec,
    stored: Option<&Stored>,
    opts: &RunOptions,
    now: DateTime<Utc>,
) -> Result<Issued, CertError> {
    if let Some(a) = &spec.issuer.acme {
        let key = KeyChoice::of(spec).key(stored.map(|s| s.key_pem.as_str()))?;
        let account = store.load_account(&a.server, &a.email).await?;
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
            presenter: opts.presenter.as_deref(),
        })
        .await?;
        if let Some(json) = out.new_account {
            store.save_account(&a.server, &a.email, &json).await?;
        }
        return Ok(out.issued);
    }
    if let Some(ca) = &spec.issuer.ca {
        let (cert, key, source) = store.load_ca(&ca.secret_name).await?;
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
