//! `berth cert renew --kube`: the engine's round ([`crate::cert::run::round_in`]) over the
//! Kubernetes API, run in the renewal Job's pod. [`KubeStore`] reads the Certificate, its TLS
//! Secret, the ACME account Secret and a CA Secret by name, writes the TLS Secret only with a
//! complete new pair and the status through the status subresource (only when it changed).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};

use super::solver::{KubeSolver, JOB_MANAGER};
use super::{account_secret_name, ca_pair, renew_now, stored, tls_secret};
use crate::api::{Certificate, CertificateStatus};
use crate::cert::round::Stored;
use crate::cert::run::{round_in, RunOptions, RunResult, Store};
use crate::cert::timing::Decision;
use crate::cert::{CertError, Issued};
use crate::k8s::meta::MANAGER;

/// How long the first read retries connection errors.
const FIRST_READ_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// The key of the ACME account Secret holding the account credentials (JSON).
pub const ACCOUNT_KEY: &str = "account.json";

fn api_err(doing: impl Into<String>) -> impl FnOnce(kube::Error) -> CertError {
    let doing = doing.into();
    move |e| CertError::Api {
        doing,
        detail: e.to_string(),
    }
}

/// One Certificate's store in its namespace.
pub struct KubeStore {
    cert: Certificate,
    certs: Api<Certificate>,
    secrets: Api<Secret>,
    ns: String,
}

impl KubeStore {
    pub fn new(client: Client, cert: Certificate) -> KubeStore {
        let ns = cert.namespace().unwrap_or_else(|| "default".into());
        KubeStore {
            certs: Api::namespaced(client.clone(), &ns),
            secrets: Api::namespaced(client, &ns),
            cert,
            ns,
        }
    }

    async fn secret(&self, name: &str) -> Result<Option<Secret>, CertError> {
        self.secrets
            .get_opt(name)
            .await
            .map_err(api_err(format!("reading Secret {}/{name}", self.ns)))
    }

    fn apply() -> PatchParams {
        PatchParams::apply(JOB_MANAGER).force()
    }
}

impl Store for KubeStore {
    async fn load(&self) -> Result<Option<Stored>, CertError> {
        Ok(self
            .secret(&self.cert.spec.secret_name)
            .await?
            .as_ref()
            .and_then(stored))
    }

    async fn save(&self, issued: &Issued) -> Result<(), CertError> {
        let name = &self.cert.spec.secret_name;
        let secret = tls_secret(&self.cert, issued);
        self.secrets
            .patch(name, &Self::apply(), &Patch::Apply(&secret))
            .await
            .map_err(api_err(format!("writing Secret {}/{name}", self.ns)))?;
        Ok(())
    }

    async fn load_status(&self) -> Result<Option<CertificateStatus>, CertError> {
        Ok(self.cert.status.clone())
    }

    async fn save_status(
        &self,
        previous: Option<&CertificateStatus>,
        status: &CertificateStatus,
    ) -> Result<(), CertError> {
        let name = self.cert.name_any();
        crate::k8s::report::apply_status(&self.certs, &name, previous, status.clone())
            .await
            .map_err(api_err(format!(
                "writing the status of Certificate {}/{name}",
                self.ns
            )))?;
        Ok(())
    }

    async fn load_account(&self, server: &str, email: &str) -> Result<Option<String>, CertError> {
        let s = self.secret(&account_secret_name(server, email)).await?;
        Ok(s.and_then(|s| {
            let b = s.data?.remove(ACCOUNT_KEY)?;
            String::from_utf8(b.0).ok()
        }))
    }

    async fn save_account(&self, server: &str, email: &str, json: &str) -> Result<(), CertError> {
        let name = account_secret_name(server, email);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.ns.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    MANAGER.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                ACCOUNT_KEY.to_string(),
                ByteString(json.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        };
        self.secrets
            .patch(&name, &Self::apply(), &Patch::Apply(&secret))
            .await
            .map_err(api_err(format!("writing Secret {}/{name}", self.ns)))?;
        Ok(())
    }

    async fn load_ca(&self, secret_name: &str) -> Result<(String, String, String), CertError> {
        let source = format!("Secret {}/{secret_name}", self.ns);
        let bad = |detail: String| CertError::BadCa {
            source_name: source.clone(),
            detail,
        };
        let s = self
            .secret(secret_name)
            .await?
            .ok_or_else(|| bad("it does not exist".into()))?;
        let (c, k) = ca_pair(&s).map_err(bad)?;
        Ok((c, k, source))
    }
}

/// What `berth cert renew --kube` is told besides the Certificate's name.
#[derive(Clone, Debug, Default)]
pub struct KubeRenew {
    /// Tokens, self-check, ACME CA bundle, timeout; `renew_now` overrides the annotation.
    pub opts: RunOptions,
    /// `ingressClassName` of the solver Ingress when the Certificate's `acme.http01` names none.
    pub ingress_class: Option<String>,
}

/// One round for Certificate `namespace/name`: renews only when due (or `issue_now`), with the
/// solver Service and Ingress routing HTTP-01 to this pod while an order is under way.
pub async fn renew(
    client: Client,
    namespace: &str,
    name: &str,
    how: &KubeRenew,
) -> Result<RunResult, CertError> {
    let certs: Api<Certificate> = Api::namespaced(client.clone(), namespace);
    // A pod's first connection may precede its network (or the API's route) by a moment: the
    // first read retries connection errors for a short while; an API answer is final.
    let deadline = tokio::time::Instant::now() + FIRST_READ_PATIENCE;
    let cert = loop {
        match certs.get(name).await {
            Ok(c) => break c,
            Err(kube::Error::Api(e)) => {
                return Err(api_err(format!("reading Certificate {namespace}/{name}"))(
                    kube::Error::Api(e),
                ))
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(api_err(format!("reading Certificate {namespace}/{name}"))(
                    e,
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "the API is not reachable yet, retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    let mut opts = how.opts.clone();
    if opts.renew_now.is_none() {
        opts.renew_now = renew_now(&cert).map(str::to_string);
    }
    let class = super::solver_class(&cert, how.ingress_class.as_deref());
    opts.presenter = Some(Arc::new(KubeSolver::new(client.clone(), &cert, class)));
    let spec = cert.spec.clone();
    let generation = cert.metadata.generation;
    let regarding = cert.object_ref(&());
    let store = KubeStore::new(client.clone(), cert);
    let r = round_in(&store, &spec, generation, &opts, Utc::now()).await?;
    // An attempt is reported as an Event on the Certificate: a failure is a Warning even while
    // the old certificate is served (Ready stays True/RenewalFailing until it expires).
    if matches!(r.decision, Decision::Issue(_)) {
        let issuing = r.status.conditions.iter().find(|c| c.type_ == "Issuing");
        let (kind, reason) = match (r.stored_new, issuing) {
            (true, _) => (EventType::Normal, "Issued"),
            (false, Some(c)) => (EventType::Warning, c.reason.as_str()),
            (false, None) => (EventType::Warning, "IssuanceFailed"),
        };
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: JOB_MANAGER.into(),
                instance: std::env::var("POD_NAME")
                    .ok()
                    .or_else(|| std::env::var("HOSTNAME").ok()),
            },
        );
        let note = issuing.map(|c| c.message.clone()).unwrap_or_default();
        crate::k8s::report::publish(&recorder, &regarding, kind, reason, "Issue", note).await;
    }
    Ok(r)
}
