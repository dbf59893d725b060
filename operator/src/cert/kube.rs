//! The Kubernetes side of the certificate engine: pure builders (the TLS Secret, the ACME
//! renewal CronJob and its first Job) and the reading of a TLS Secret. The controller in
//! `kube/controller.rs` only reads, applies and writes status.
//!
//! The TLS Secret carries no ownerReference: deleting a Certificate never deletes a Secret an
//! Ingress may still serve (cert-manager's default too). It is labelled so it can be found.
//!
//! `berth cert renew --kube` (the Job's pod) runs the engine's round over the API
//! (`kube/renew.rs`), serves HTTP-01 answers behind a temporary Service and Ingress
//! (`kube/solver.rs`), as a ServiceAccount the controller creates per Certificate
//! (`kube/rbac.rs`).

pub mod controller;
pub mod rbac;
pub mod renew;
pub mod solver;

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EnvVar, PodSpec, PodTemplateSpec, Secret,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};

use super::round::Stored;
use super::{Issued, RENEW_NOW_ANNOTATION};
use crate::api::Certificate;
use crate::k8s::meta::MANAGER;

/// Label on everything made for a Certificate (its name).
pub const CERT_LABEL: &str = "berth.dev/certificate";
/// The Secret type a TLS Secret has.
pub const TLS_TYPE: &str = "kubernetes.io/tls";
/// Finished renewal Jobs kept for inspection.
const HISTORY_LIMIT: i32 = 3;
/// How long one ACME attempt may take in its Job.
const ACTIVE_DEADLINE_SECONDS: i64 = 600;

/// What the controller puts into the renewal Jobs it makes.
#[derive(Clone, Debug, Default)]
pub struct JobSettings {
    /// The berth image the Jobs run.
    pub image: String,
    /// The account the Jobs run as; `None`: the per-Certificate account the controller
    /// creates (`<certificate>-renew`, see `rbac.rs`).
    pub service_account: Option<String>,
    /// `ingressClassName` of the solver Ingress when the Certificate's `acme.http01` names none
    /// (the operator's `--ingress-class`).
    pub ingress_class: Option<String>,
    /// A ConfigMap in the Certificate's namespace whose `ca.crt` the Jobs trust for the ACME
    /// server's HTTPS (a private ACME CA such as step-ca or Pebble).
    pub acme_ca_config_map: Option<String>,
}

/// Where the ACME CA bundle of [`JobSettings::acme_ca_config_map`] is mounted in the Job.
const ACME_CA_DIR: &str = "/etc/berth/acme-ca";

/// `name`, shortened with a hash suffix to fit a 63-character label value or DNS label.
pub fn short_name(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let head: String = name.chars().take(52).collect();
    format!(
        "{}-{}",
        head.trim_end_matches(['-', '.']),
        crate::backup::kube::value_hash(name)
    )
}

/// The account key Secret of an ACME server and contact, in the Certificate's namespace.
pub fn account_secret_name(server: &str, email: &str) -> String {
    format!(
        "berth-acme-account-{}",
        crate::backup::kube::value_hash(&format!("{server}\n{email}"))
    )
}

pub(crate) fn labels(cert: &Certificate) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
        (CERT_LABEL.into(), cert.name_any()),
    ])
}

/// The `kubernetes.io/tls` Secret of an issued certificate.
pub fn tls_secret(cert: &Certificate, issued: &Issued) -> Secret {
    let mut data = BTreeMap::from([
        (
            "tls.crt".to_string(),
            ByteString(issued.cert_pem.clone().into_bytes()),
        ),
        (
            "tls.key".to_string(),
            ByteString(issued.key_pem.clone().into_bytes()),
        ),
    ]);
    if let Some(ca) = &issued.ca_pem {
        data.insert("ca.crt".into(), ByteString(ca.clone().into_bytes()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(cert.spec.secret_name.clone()),
            namespace: cert.namespace(),
            labels: Some(labels(cert)),
            ..ObjectMeta::default()
        },
        type_: Some(TLS_TYPE.into()),
        data: Some(data),
        ..Secret::default()
    }
}

fn text(s: &Secret, key: &str) -> Option<String> {
    let b = s.data.as_ref()?.get(key)?;
    String::from_utf8(b.0.clone()).ok()
}

/// What a TLS Secret holds, when it has both `tls.crt` and `tls.key`.
pub fn stored(s: &Secret) -> Option<Stored> {
    Some(Stored {
        cert_pem: text(s, "tls.crt")?,
        key_pem: text(s, "tls.key")?,
        ca_pem: text(s, "ca.crt"),
    })
}

/// The CA pair of a `ca` issuer's Secret: `(tls.crt, tls.key)`, or what is missing.
pub fn ca_pair(s: &Secret) -> Result<(String, String), String> {
    match (text(s, "tls.crt"), text(s, "tls.key")) {
        (Some(c), Some(k)) => Ok((c, k)),
        (None, _) => Err("has no tls.crt".into()),
        (_, None) => Err("has no tls.key".into()),
    }
}

/// The `berth.dev/renew-now` value, when set.
pub fn renew_now(cert: &Certificate) -> Option<&str> {
    cert.metadata
        .annotations
        .as_ref()?
        .get(RENEW_NOW_ANNOTATION)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
}

pub(crate) fn owner_meta(cert: &Certificate, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cert.namespace(),
        labels: Some(labels(cert)),
        owner_references: cert.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// What the renewal Job runs: `berth cert renew` for this Certificate, against the API.
pub fn renew_args(cert: &Certificate, settings: &JobSettings) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "cert".into(),
        "renew".into(),
        "--kube".into(),
        "--namespace".into(),
        cert.namespace().unwrap_or_else(|| "default".into()),
        "--name".into(),
        cert.name_any(),
    ];
    let class = solver_class(cert, settings.ingress_class.as_deref());
    if let Some(class) = class {
        args.push(format!("--ingress-class={class}"));
    }
    args
}

/// The Job spec the CronJob and the first issuance run. Its pod is labelled
/// `berth.dev/acme-solver` so the solver Service selects it, and listens on
/// [`solver::SOLVER_PORT`] for HTTP-01.
/// `issue_now`: the Job issues whatever the timing says (`--now`: the controller decided).
pub fn job_spec(cert: &Certificate, settings: &JobSettings, issue_now: bool) -> JobSpec {
    let mut args = renew_args(cert, settings);
    if issue_now {
        args.push("--now".into());
    }
    let mut pod_labels = labels(cert);
    pod_labels.insert(solver::SOLVER_LABEL.into(), solver::solver_name(cert));
    let (mut env, mut volumes, mut mounts) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(cm) = &settings.acme_ca_config_map {
        volumes.push(Volume {
            name: "acme-ca".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "acme-ca".into(),
            mount_path: ACME_CA_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        env.push(EnvVar {
            name: "BERTH_ACME_CA_BUNDLE".into(),
            value: Some(format!("{ACME_CA_DIR}/ca.crt")),
            ..EnvVar::default()
        });
    }
    let account = settings
        .service_account
        .clone()
        .unwrap_or_else(|| rbac::account_name(cert));
    JobSpec {
        backoff_limit: Some(0),
        active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(pod_labels),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                service_account_name: Some(account),
                containers: vec![Container {
                    name: "renew".into(),
                    image: Some(settings.image.clone()),
                    args: Some(args),
                    ports: Some(vec![ContainerPort {
                        name: Some("http01".into()),
                        container_port: solver::SOLVER_PORT.into(),
                        ..ContainerPort::default()
                    }]),
                    env: (!env.is_empty()).then_some(env),
                    volume_mounts: (!mounts.is_empty()).then_some(mounts),
                    ..Container::default()
                }],
                volumes: (!volumes.is_empty()).then_some(volumes),
                ..PodSpec::default()
            }),
        },
        ..JobSpec::default()
    }
}

/// The renewal CronJob of an ACME Certificate, named `<certificate>-renew`: it checks on
/// `renewalSchedule` and renews only when due.
pub fn renewal_cron_job(cert: &Certificate, settings: &JobSettings) -> CronJob {
    CronJob {
        metadata: owner_meta(cert, cron_job_name(cert)),
        spec: Some(CronJobSpec {
            schedule: cert.spec.renewal_schedule.clone(),
            time_zone: Some("UTC".into()),
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(HISTORY_LIMIT),
            failed_jobs_history_limit: Some(HISTORY_LIMIT),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cert)),
                    ..ObjectMeta::default()
                }),
                spec: Some(job_spec(cert, settings, false)),
            },
            ..CronJobSpec::default()
        }),
        status: None,
    }
}

pub fn cron_job_name(cert: &Certificate) -> String {
    format!("{}-renew", cert.name_any())
}

/// The Job that issues at once (first issuance, or a new renew-now value), named after the
/// value so it is created once.
pub fn now_job(cert: &Certificate, settings: &JobSettings, value: &str) -> Job {
    let name = format!(
        "{}-issue-{}",
        cert.name_any(),
        crate::backup::kube::value_hash(value)
    );
    Job {
        metadata: owner_meta(cert, name),
        spec: Some(job_spec(cert, settings, true)),
        status: None,
    }
}

/// Whether a Certificate is issued by ACME (in a Job) rather than by the controller.
pub fn is_acme(cert: &Certificate) -> bool {
    cert.spec.issuer.acme.is_some()
}

/// The ingress class of the HTTP-01 solver's Ingress: the Certificate's own
/// (`acme.http01.ingressClassName`) wins over the operator's `--ingress-class`.
pub fn solver_class(cert: &Certificate, operator: Option<&str>) -> Option<String> {
    cert.spec
        .issuer
        .acme
        .as_ref()
        .and_then(|a| a.http01.as_ref())
        .and_then(|h| h.ingress_class_name.clone())
        .or_else(|| operator.map(str::to_string))
}
