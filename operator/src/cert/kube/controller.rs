//! The Kubernetes Certificate controller. Each reconcile: read the TLS Secret → decide (the
//! engine's `round::decide`) → for `selfSigned`/`ca`, issue here and server-side apply the
//! Secret; for `acme`, apply the renewal CronJob and start a Job at once for the first issuance
//! or a new `berth.dev/renew-now` value → write the status (only when it changed) → requeue at
//! the next moment something is due.
//!
//! Events: Certificates, plus Secrets, CronJobs and Jobs labelled `berth.dev/certificate`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use super::{
    ca_pair, is_acme, now_job, rbac, renew_now, renewal_cron_job, stored, tls_secret, JobSettings,
    CERT_LABEL,
};
use crate::api::{Certificate, CertificateStatus};
use crate::cert::inspect::CertInfo;
use crate::cert::round::{self, CaPair};
use crate::cert::status::Outcome;
use crate::cert::timing::{Decision, DueReason};
use crate::cert::CertError;
use crate::controller::synced::MainWatch;
use crate::k8s::meta::MANAGER;

/// The longest wait between two looks at a Certificate without any event.
pub const RESYNC: Duration = Duration::from_secs(600);
/// Retry delay after a failed reconcile (an API error, not an issuance failure).
pub const RETRY: Duration = Duration::from_secs(30);
/// Retry delay while the CA Secret does not exist yet.
pub const BLOCKED_RETRY: Duration = Duration::from_secs(60);

/// Why a reconcile failed (API errors; issuance failures go into the status instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}; check the operator's RBAC and the Certificate's events")]
    Kube(#[from] kube::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The controller's Prometheus metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    issued: Counter,
    failed: Counter,
}

impl Metrics {
    /// Registers `berth_certificate_reconciles_total{result}`, `berth_certificate_issued_total`
    /// and `berth_certificate_failed_total`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        registry.register(
            "berth_certificate_reconciles",
            "Reconciles of Certificate objects, by result",
            m.reconciles.clone(),
        );
        registry.register(
            "berth_certificate_issued",
            "Certificates issued by the controller",
            m.issued.clone(),
        );
        registry.register(
            "berth_certificate_failed",
            "Failed issuance attempts in the controller",
            m.failed.clone(),
        );
        m
    }

    fn count(&self, result: &str) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// What ACME renewal Jobs run: the image (`BERTH_IMAGE`), the account
    /// (`BERTH_CERT_SERVICE_ACCOUNT`; unset: one per Certificate, made here), the solver's
    /// ingress class (the operator's `--ingress-class`) and a ConfigMap with the ACME server's
    /// CA (`BERTH_ACME_CA_CONFIGMAP`).
    pub jobs: JobSettings,
    /// The renewal Jobs as their watch last saw them; `None` (no watch running): a Job is
    /// created and a conflict means it exists.
    pub job_cache: Option<Store<PartialObjectMeta<Job>>>,
    /// The labelled TLS Secrets' metadata (no data) as their watch last saw them; `None` (no
    /// watch running): the Secret is read on every reconcile.
    pub secret_cache: Option<Store<PartialObjectMeta<Secret>>>,
    /// What each TLS Secret (`namespace/name`) held when last read, without key material.
    pub(crate) seen: std::sync::Mutex<std::collections::HashMap<String, Seen>>,
    /// Raised while the watch behind `secret_cache` has a complete list (memory is used only
    /// then); lowered when it fails.
    pub secrets_synced: crate::controller::synced::Synced,
    /// Hash of the renewer account and CronJob last applied per Certificate (`namespace/name`):
    /// applied again only when they change (or after a restart).
    pub(crate) applied: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "berth-certificate".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Context {
            client,
            metrics,
            recorder,
            jobs: JobSettings {
                image: std::env::var("BERTH_IMAGE")
                    .unwrap_or_else(|_| crate::backup::kube::controller::DEFAULT_IMAGE.to_string()),
                service_account: std::env::var("BERTH_CERT_SERVICE_ACCOUNT")
                    .ok()
                    .filter(|s| !s.is_empty()),
                ingress_class: None,
                acme_ca_config_map: std::env::var("BERTH_ACME_CA_CONFIGMAP")
                    .ok()
                    .filter(|s| !s.is_empty()),
            },
            job_cache: None,
            secret_cache: None,
            seen: Default::default(),
            secrets_synced: Default::default(),
            applied: Default::default(),
        }
    }
}

/// A TLS Secret as last read: valid at a resourceVersion, or absent.
pub(crate) enum Seen {
    Valid {
        resource_version: String,
        info: CertInfo,
    },
    Absent {
        at: std::time::Instant,
    },
}

/// How long a Secret found absent is taken as still absent while the watch of labelled Secrets
/// shows none (a Secret created without berth's label is not seen by that watch).
pub const ABSENT_RECHECK: Duration = Duration::from_secs(3600);

/// The TLS Secret's pair (`None`: not loaded, known from memory) and what it holds.
type Read = (
    Option<Option<round::Stored>>,
    Option<Result<CertInfo, CertError>>,
);

impl Context {
    /// Forgets what was read of the TLS Secrets no Certificate in `certs` names any more.
    fn forget_deleted(&self, certs: &Store<DeserializeGuard<Certificate>>) {
        let named: std::collections::HashSet<String> = certs
            .state()
            .iter()
            .filter_map(|c| {
                let cert = c.0.as_ref().ok()?;
                Some(format!("{}/{}", c.namespace()?, cert.spec.secret_name))
            })
            .collect();
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| named.contains(k));
    }

    /// What the Secret holds, from memory when the labelled Secrets' watch shows it unchanged
    /// since it was last read (or still absent, for at most [`ABSENT_RECHECK`]); else one GET.
    async fn read_tls(&self, secrets: &Api<Secret>, ns: &str, name: &str) -> Result<Read, Error> {
        let key = format!("{ns}/{name}");
        if let Some(cache) = self
            .secret_cache
            .as_ref()
            .filter(|_| self.secrets_synced.is_set())
        {
            let meta = cache.get(&ObjectRef::new(name).within(ns));
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            match (meta, seen.get(&key)) {
                (
                    Some(m),
                    Some(Seen::Valid {
                        resource_version,
                        info,
                    }),
                ) if m.metadata.resource_version.as_ref() == Some(resource_version) => {
                    return Ok((None, Some(Ok(info.clone()))));
                }
                (None, Some(Seen::Absent { at })) if at.elapsed() < ABSENT_RECHECK => {
                    return Ok((None, None));
                }
                _ => {}
            }
        }
        let secret = secrets.get_opt(name).await?;
        let pair = secret.as_ref().and_then(stored);
        let before = round::read(pair.as_ref());
        self.remember(key, secret.as_ref(), before.as_ref());
        Ok((Some(pair), before))
    }

    /// Records what a Secret read or written holds (forgets a Secret whose pair is invalid).
    fn remember(
        &self,
        key: String,
        secret: Option<&Secret>,
        before: Option<&Result<CertInfo, CertError>>,
    ) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match (secret, before) {
            (None, _) => {
                seen.insert(
                    key,
                    Seen::Absent {
                        at: std::time::Instant::now(),
                    },
                );
            }
            (Some(s), Some(Ok(info))) if s.metadata.resource_version.is_some() => {
                seen.insert(
                    key,
                    Seen::Valid {
                        resource_version: s.metadata.resource_version.clone().unwrap_or_default(),
                        info: info.clone(),
                    },
                );
            }
            _ => {
                seen.remove(&key);
            }
        }
    }
}

/// Runs the Certificate controller until `shutdown` is cancelled. `namespace: None` watches all.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    run_with(Context::new(client, metrics), namespace, shutdown).await
}

/// [`run`] with a prepared context.
pub async fn run_with(
    ctx: Context,
    namespace: Option<String>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    run_shared(ctx, namespace, shutdown, None).await
}

/// [`run_with`], driving `shared`: the Certificate watch whose cache the AppStack controller
/// of the same process reads (each Certificate kept once), or a watch of its own (`None`).
pub async fn run_shared(
    ctx: Context,
    namespace: Option<String>,
    shutdown: CancellationToken,
    shared: Option<MainWatch<DeserializeGuard<Certificate>>>,
) -> Result<(), Error> {
    let client = ctx.client.clone();
    #[allow(clippy::type_complexity)]
    let (certs, secrets, cron_jobs, jobs): (
        Api<DeserializeGuard<Certificate>>,
        Api<PartialObjectMeta<Secret>>,
        Api<CronJob>,
        Api<PartialObjectMeta<Job>>,
    ) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let labelled = crate::controller::synced::watch_config().labels(CERT_LABEL);
    let (job_store, job_writer) = reflector::store();
    // Only the labelled Secrets' metadata is watched, and only where the operator may list and
    // watch Secrets (the chart grants it with certificates.watchSecrets=true): their data
    // (private keys) is read by name when a Secret changed, never kept in a cache. Without it,
    // a Secret is read on every reconcile (once per Certificate every 10 minutes when idle).
    let watch_secrets = may_watch_secrets(&client, namespace.as_deref()).await;
    if !watch_secrets {
        info!("no list/watch on Secrets: each Certificate's Secret is read by name on every reconcile (certificates.watchSecrets=true in the chart lets berth watch their metadata)");
    }
    let (secret_store, secret_writer) = reflector::store();
    let secrets_synced = crate::controller::synced::Synced::default();
    let ctx = Arc::new(Context {
        job_cache: Some(job_store),
        secret_cache: watch_secrets.then_some(secret_store),
        secrets_synced: secrets_synced.clone(),
        ..ctx
    });
    let secret_events = watch_secrets.then(|| {
        watcher(secrets, labelled.clone())
            .default_backoff()
            .modify(crate::controller::trim::lean::<PartialObjectMeta<Secret>>)
            .reflect(secret_writer)
            .inspect(move |e| match e {
                Ok(watcher::Event::InitDone) => secrets_synced.set(),
                Err(_) => secrets_synced.clear(),
                Ok(_) => {}
            })
            // Deletions too: a deleted TLS Secret is issued again at once.
            .touched_objects()
    });
    // Only whether a Job exists is read: its metadata is watched, not the whole Job (a pending
    // Job cached without its spec still took 2.6 kB, the size of the type, and its status).
    let job_events = watcher(jobs, labelled.clone())
        .default_backoff()
        .modify(crate::controller::trim::lean::<PartialObjectMeta<Job>>)
        .reflect(job_writer)
        .applied_objects();
    let by_label = |o: &dyn Fn() -> (Option<String>, Option<String>)| {
        let (name, ns) = o();
        Some(ObjectRef::<DeserializeGuard<Certificate>>::new(&name?).within(&ns?))
    };
    // Certificates cached without managedFields, and the CRD check woken when this watch fails.
    let watch = shared.unwrap_or_else(|| {
        MainWatch::new(
            certs,
            crate::controller::synced::watch_config().any_semantic(),
        )
        .prepared_by(crate::controller::trim::lean_generated)
    });
    let (trigger, reader) = watch.into_stream(crate::controller::synced::Synced::default());
    // What is remembered of deleted Certificates' Secrets is forgotten.
    let gc = {
        let (ctx, certs) = (ctx.clone(), reader.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RESYNC).await;
                ctx.forget_deleted(&certs);
            }
        })
    };
    let mut controller = Controller::for_stream(trigger, reader)
        .with_config(crate::controller::synced::controller_config(
            std::time::Duration::from_millis(200),
        ))
        .owns(cron_jobs, labelled.clone());
    if let Some(events) = secret_events {
        controller = controller.watches_stream(events, move |s: PartialObjectMeta<Secret>| {
            by_label(&|| (s.labels().get(CERT_LABEL).cloned(), s.namespace()))
        });
    }
    controller
        .watches_stream(job_events, move |j: PartialObjectMeta<Job>| {
            by_label(&|| (j.labels().get(CERT_LABEL).cloned(), j.namespace()))
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile_guarded, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "certificate reconcile failed");
            }
        })
        .await;
    gc.abort();
    Ok(())
}

/// [`reconcile`] for what the watch delivers: a Certificate that does not deserialize gets a
/// Warning Event and waits for a change, without failing the watch of every other one.
pub async fn reconcile_guarded(
    guarded: Arc<DeserializeGuard<Certificate>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match &guarded.0 {
        Ok(cert) => reconcile(Arc::new(cert.clone()), ctx).await,
        Err(invalid) => {
            crate::k8s::report::publish(
                &ctx.recorder,
                &guarded.object_ref(&()),
                kube::runtime::events::EventType::Warning,
                "InvalidObject",
                "Certificate",
                format!(
                    "the Certificate cannot be read ({}): fix it so it matches the Certificate CRD",
                    invalid.error
                ),
            )
            .await;
            warn!(certificate = %guarded.name_any(), error = %invalid.error, "cannot reconcile");
            ctx.metrics.count("invalid");
            Ok(Action::await_change())
        }
    }
}

/// Whether this operator may list and watch Secrets (in `namespace`, or cluster-wide), asked
/// with SelfSubjectAccessReviews (every authenticated user may create them). `false` on any
/// error: the controller then reads Secrets by name only.
pub async fn may_watch_secrets(client: &Client, namespace: Option<&str>) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for verb in ["list", "watch"] {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    resource: Some("secrets".into()),
                    namespace: namespace.map(str::to_string),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        match reviews.create(&PostParams::default(), &review).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => return false,
            Err(e) => {
                warn!(error = %e, "cannot ask whether Secrets may be watched; reading them by name");
                return false;
            }
        }
    }
    true
}

fn error_policy(
    cert: Arc<DeserializeGuard<Certificate>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    warn!(certificate = %cert.name_any(), error = %err, "reconcile failed, retrying");
    ctx.metrics.count("error");
    Action::requeue(RETRY)
}

/// The requeue for a decision: at the time it names, within [1s, RESYNC].
fn requeue(d: &Decision) -> Action {
    match d {
        Decision::Wait { until, .. } => {
            let secs = (*until - Utc::now()).num_seconds().max(1) as u64;
            Action::requeue(Duration::from_secs(secs).min(RESYNC))
        }
        Decision::Issue(_) => Action::requeue(Duration::from_secs(1)),
    }
}

/// One reconcile of one Certificate.
#[instrument(skip_all, fields(certificate = %cert.name_any()))]
pub async fn reconcile(cert: Arc<Certificate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cert.namespace().unwrap_or_else(|| "default".into());
    let name = cert.name_any();
    let client = &ctx.client;
    let certs: Api<Certificate> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let previous = cert.status.clone();
    let generation = cert.meta().generation;
    let apply = PatchParams::apply(MANAGER).force();
    let now = Utc::now();
    let spec = &cert.spec;
    let renew_now = renew_now(&cert);

    let (loaded, before) = ctx.read_tls(&secrets, &ns, &spec.secret_name).await?;
    let decision = match round::decide(spec, previous.as_ref(), before.as_ref(), renew_now, now) {
        Ok(d) => d,
        Err(e) => {
            let st = round::status_after(
                spec,
                generation,
                previous.as_ref(),
                before.as_ref(),
                renew_now,
                &Outcome::Failed(DueReason::Invalid, &e),
                now,
            );
            write_status(&certs, &name, previous.as_ref(), st).await?;
            ctx.metrics.count("invalid");
            return Ok(Action::await_change());
        }
    };

    if is_acme(&cert) {
        let cj = renewal_cron_job(&cert, &ctx.jobs);
        let key = format!("{ns}/{name}");
        let own_account = ctx.jobs.service_account.is_none();
        let hash = crate::controller::diff::hash(&serde_json::json!([
            own_account.then(|| rbac::service_account(&cert)),
            own_account.then(|| rbac::role(&cert)),
            own_account.then(|| rbac::role_binding(&cert)),
            &cj,
        ]));
        let applied = ctx
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            == Some(&hash);
        if !applied {
            if own_account {
                apply_renewer_account(client, &ns, &cert).await?;
            }
            let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
            cron_jobs
                .patch(&cj.name_any(), &apply, &Patch::Apply(&cj))
                .await?;
            ctx.applied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, hash);
        }
        let outcome = match decision {
            // Nothing stored yet, or asked for: a Job at once. Otherwise the CronJob renews.
            Decision::Issue(
                reason @ (DueReason::Missing
                | DueReason::RenewNow
                | DueReason::Invalid
                | DueReason::NamesChanged),
            ) => {
                // One Job per value (created once); after a failed attempt's backoff, a new one.
                let value = renew_now.map(str::to_string).unwrap_or_else(|| {
                    format!(
                        "{}-{}-{}",
                        reason.reason(),
                        generation.unwrap_or(0),
                        previous.as_ref().map(|p| p.failed_attempts).unwrap_or(0)
                    )
                });
                let job = now_job(&cert, &ctx.jobs, &value);
                let exists = ctx.job_cache.as_ref().is_some_and(|c| {
                    c.get(&ObjectRef::new(&job.name_any()).within(&ns))
                        .is_some()
                });
                if !exists {
                    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
                    match jobs.create(&PostParams::default(), &job).await {
                        Ok(j) => info!(job = %j.name_any(), "issuance job started"),
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Outcome::Pending(
                    reason,
                    format!(
                        "job {} runs `berth cert renew` against {}",
                        job.name_any(),
                        spec.issuer
                            .acme
                            .as_ref()
                            .map(|a| a.server.as_str())
                            .unwrap_or_default()
                    ),
                )
            }
            Decision::Issue(reason) => Outcome::Pending(
                reason,
                format!(
                    "the CronJob {} renews it at its next run ({})",
                    cj.name_any(),
                    spec.renewal_schedule
                ),
            ),
            wait => Outcome::Waiting(wait),
        };
        let st = round::status_after(
            spec,
            generation,
            previous.as_ref(),
            before.as_ref(),
            renew_now,
            &outcome,
            now,
        );
        write_status(&certs, &name, previous.as_ref(), st).await?;
        ctx.metrics.count("ok");
        return Ok(match decision {
            Decision::Issue(_) => Action::requeue(RESYNC),
            d => requeue(&d),
        });
    }

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
        write_status(&certs, &name, previous.as_ref(), st).await?;
        ctx.metrics.count("ok");
        return Ok(requeue(&decision));
    };

    // The CA pair, for a `ca` issuer. A missing Secret blocks without counting as a failure.
    let mut ca_text = None;
    if let Some(ca) = &spec.issuer.ca {
        let source = format!("Secret {ns}/{}", ca.secret_name);
        match secrets.get_opt(&ca.secret_name).await? {
            None => {
                let e = CertError::BadCa {
                    source_name: source,
                    detail: "it does not exist".into(),
                };
                let mut st = round::status_after(
                    spec,
                    generation,
                    previous.as_ref(),
                    before.as_ref(),
                    None,
                    &Outcome::Waiting(decision),
                    now,
                );
                blocked(&mut st, &e, generation, previous.as_ref(), now);
                write_status(&certs, &name, previous.as_ref(), st).await?;
                ctx.metrics.count("blocked");
                return Ok(Action::requeue(BLOCKED_RETRY));
            }
            Some(s) => ca_text = Some((source, ca_pair(&s))),
        }
    }
    // The stored pair (its key is kept when the names still match): read now when the memory
    // answered for it.
    let pair = match loaded {
        Some(pair) => pair,
        None => secrets
            .get_opt(&spec.secret_name)
            .await?
            .as_ref()
            .and_then(stored),
    };
    let result = match &ca_text {
        Some((source, Err(missing))) => Err(CertError::BadCa {
            source_name: source.clone(),
            detail: missing.clone(),
        }),
        Some((source, Ok((c, k)))) => round::issue_local(
            spec,
            Some(&CaPair {
                cert_pem: c,
                key_pem: k,
                source,
            }),
            pair.as_ref(),
            now,
        ),
        None => round::issue_local(spec, None, pair.as_ref(), now),
    };
    let (after, outcome_err) = match result {
        Ok(issued) => {
            let secret = tls_secret(&cert, &issued);
            let written = secrets
                .patch(&spec.secret_name, &apply, &Patch::Apply(&secret))
                .await?;
            let after = round::read(Some(&round::Stored {
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
                ca_pem: issued.ca_pem,
            }));
            ctx.remember(
                format!("{ns}/{}", spec.secret_name),
                Some(&written),
                after.as_ref(),
            );
            ctx.metrics.issued.inc();
            (after, None)
        }
        Err(e) => {
            ctx.metrics.failed.inc();
            (before, Some(e))
        }
    };
    let outcome = match &outcome_err {
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
    let (kind, ev_reason) = match &outcome_err {
        None => (EventType::Normal, "Issued"),
        Some(e) => (EventType::Warning, e.reason()),
    };
    let note = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Issuing")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    publish(&ctx, &cert, kind, ev_reason, note).await;
    write_status(&certs, &name, previous.as_ref(), st).await?;
    ctx.metrics.count(if outcome_err.is_none() {
        "issued"
    } else {
        "failed"
    });
    Ok(Action::requeue(RESYNC))
}

/// The ServiceAccount, Role and RoleBinding the renewal Jobs of `cert` run as (server-side
/// apply, owned by the Certificate).
async fn apply_renewer_account(client: &Client, ns: &str, cert: &Certificate) -> Result<(), Error> {
    let apply = PatchParams::apply(MANAGER).force();
    let name = rbac::account_name(cert);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    accounts
        .patch(&name, &apply, &Patch::Apply(&rbac::service_account(cert)))
        .await?;
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    roles
        .patch(&name, &apply, &Patch::Apply(&rbac::role(cert)))
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    bindings
        .patch(&name, &apply, &Patch::Apply(&rbac::role_binding(cert)))
        .await?;
    Ok(())
}

/// Marks a status as blocked on something the user must create (not an issuance failure).
fn blocked(
    st: &mut CertificateStatus,
    e: &CertError,
    generation: Option<i64>,
    previous: Option<&CertificateStatus>,
    now: chrono::DateTime<Utc>,
) {
    for c in &mut st.conditions {
        let keep = previous
            .and_then(|p| p.conditions.iter().find(|p| p.type_ == c.type_))
            .filter(|p| p.status == "False")
            .map(|p| p.last_transition_time.clone());
        if c.type_ == "Issuing" || st.not_after.is_none() {
            c.status = "False".into();
            c.reason = e.reason().into();
            c.message = e.to_string();
            c.observed_generation = generation;
            c.last_transition_time = keep.unwrap_or_else(|| crate::cert::status::time(now));
        }
    }
}

async fn publish(ctx: &Context, cert: &Certificate, type_: EventType, reason: &str, note: String) {
    crate::k8s::report::publish(
        &ctx.recorder,
        &cert.object_ref(&()),
        type_,
        reason,
        "Issue",
        note,
    )
    .await;
}

/// Writes the status by server-side apply, only when it differs from what is there.
async fn write_status(
    api: &Api<Certificate>,
    name: &str,
    previous: Option<&CertificateStatus>,
    status: CertificateStatus,
) -> Result<(), Error> {
    crate::k8s::report::apply_status(api, name, previous, status).await?;
    Ok(())
}
