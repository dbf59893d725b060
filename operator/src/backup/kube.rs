//! The Kubernetes side of a Backup: pure builders (the backup PVC, the CronJob that runs
//! `berth backup run`, the Job the `berth.dev/backup-now` annotation starts) and the status
//! computed from the Jobs and their pods' termination messages; the controller is in
//! [`controller`].
//!
//! The pod writes a small JSON [`RunReport`](super::report::RunReport) to its termination message (`--report
//! /dev/termination-log`): the kubelet copies it into the pod's status, which is how the
//! controller learns the new backup's name, size, checksum and the kept backups without reading
//! the volume or the bucket. Kubernetes caps the message at 4096 bytes, so the list of kept
//! backups is shortened (newest first) to fit.

pub mod controller;
pub use controller::{run, run_with_image, Metrics};
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, SecretKeySelector, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::report::{from_time, ObservedJob, RunReport};
use crate::api::backup::{Compression, DumpFormat};
use crate::api::common::SecretKeyRef;
use crate::api::Backup;
use crate::k8s::meta::{MANAGER, STACK_LABEL};

/// Label on every object of a Backup (CronJob, Jobs, pods, PVC): the Backup's name.
pub const BACKUP_LABEL: &str = "berth.dev/backup";
/// Annotation on a Backup: a new value starts a backup at once.
pub const BACKUP_NOW_ANNOTATION: &str = "berth.dev/backup-now";
/// Label on a Job started by the annotation: a hash of the annotation's value.
pub const BACKUP_NOW_LABEL: &str = "berth.dev/backup-now";
/// Where the backup volume is mounted in the pod.
pub const MOUNT_PATH: &str = "/backups";
/// Where the pod writes its [`RunReport`].
pub const REPORT_PATH: &str = "/dev/termination-log";
/// A backup Job is stopped after this long (a dump that hangs must not block the schedule).
pub const ACTIVE_DEADLINE_SECONDS: i64 = 6 * 3600;
/// Finished Jobs the CronJob keeps, per outcome.
pub const HISTORY_LIMIT: i32 = 3;

/// Where the init container puts the berth bundle in the backup pod.
pub const BUNDLE_PATH: &str = "/berth";
/// The PostgreSQL major version whose pg_dump dumps a database berth knows nothing of: the
/// newest, because pg_dump dumps older servers but never newer ones.
pub const DEFAULT_DUMP_POSTGRES_VERSION: &str = "18";
/// The UID/GID of the official postgres image's `postgres` user, which the dump runs as.
pub const POSTGRES_UID: i64 = 999;

/// What the pods of a Backup need that is not in its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInputs {
    /// The berth image (the operator's own): its init container copies berth into the pod.
    pub image: String,
    /// The PostgreSQL image whose pg_dump makes the dump ([`dump_image`]).
    pub dump_image: String,
    /// The Secret key with the database URL (resolved from `appStackRef` when used).
    pub database_url: SecretKeyRef,
    /// The AppStack whose database is dumped, so its network policy admits the pod.
    pub stack: Option<String>,
}

/// The image the dump runs in, so that pg_dump's major version is the server's: the Backup's
/// `image`, else `postgres:<postgresVersion>`, else the in-stack PostgreSQL's image
/// (`stack_image`), else `postgres:18`.
pub fn dump_image(backup: &Backup, stack_image: Option<&str>) -> String {
    let s = &backup.spec;
    if let Some(i) = s.image.as_deref().filter(|i| !i.is_empty()) {
        return i.to_string();
    }
    if let Some(v) = s.postgres_version.as_deref().filter(|v| !v.is_empty()) {
        return format!("postgres:{v}");
    }
    match stack_image {
        Some(i) => i.to_string(),
        None => format!("postgres:{DEFAULT_DUMP_POSTGRES_VERSION}"),
    }
}

/// The PVC of a `volume` destination.
pub fn pvc_name(backup: &Backup) -> String {
    format!("{}-backups", backup.name_any())
}

fn labels(backup: &Backup, stack: Option<&str>) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = [
        ("app.kubernetes.io/name", "berth-backup"),
        ("app.kubernetes.io/component", "backup"),
        ("app.kubernetes.io/part-of", "berth"),
        ("app.kubernetes.io/managed-by", MANAGER),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    l.insert("app.kubernetes.io/instance".into(), backup.name_any());
    l.insert(BACKUP_LABEL.into(), backup.name_any());
    if let Some(s) = stack {
        l.insert(STACK_LABEL.into(), s.to_string());
    }
    l
}

fn meta(backup: &Backup, name: String, stack: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: backup.namespace(),
        labels: Some(labels(backup, stack)),
        owner_references: backup.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The claim of a `volume` destination; `None` for S3. It has no owner: deleting the Backup (or
/// the AppStack that owns it) keeps the backups; the user deletes the claim explicitly.
pub fn pvc(backup: &Backup) -> Option<PersistentVolumeClaim> {
    let v = backup.spec.destination.volume.as_ref()?;
    let mut metadata = meta(backup, pvc_name(backup), None);
    metadata.owner_references = None;
    Some(PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: v.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity(v.size.clone()))].into()),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    })
}

fn format_arg(f: DumpFormat) -> &'static str {
    match f {
        DumpFormat::Custom => "custom",
        DumpFormat::Plain => "plain",
    }
}

fn compression_arg(c: Compression) -> &'static str {
    match c {
        Compression::Zstd => "zstd",
        Compression::Gzip => "gzip",
        Compression::None => "none",
    }
}

/// The destination argument of `berth backup run --to`.
pub fn destination(backup: &Backup) -> String {
    match &backup.spec.destination.s3 {
        Some(s3) => {
            let prefix = s3.prefix.trim_matches('/');
            if prefix.is_empty() {
                format!("s3://{}", s3.bucket)
            } else {
                format!("s3://{}/{prefix}", s3.bucket)
            }
        }
        None => MOUNT_PATH.to_string(),
    }
}

/// The container's arguments: `berth backup run …` from the spec.
pub fn run_args(backup: &Backup) -> Vec<String> {
    let s = &backup.spec;
    let mut a: Vec<String> = vec![
        "backup".into(),
        "run".into(),
        "--to".into(),
        destination(backup),
        "--format".into(),
        format_arg(s.format).into(),
        "--compression".into(),
        compression_arg(s.compression).into(),
        "--name-prefix".into(),
        backup.name_any(),
        "--report".into(),
        REPORT_PATH.into(),
    ];
    if let Some(n) = s.retention.keep_last {
        a.extend(["--keep-last".into(), n.to_string()]);
    }
    if let Some(age) = &s.retention.max_age {
        a.extend(["--max-age".into(), age.clone()]);
    }
    if s.verify {
        a.push("--verify".into());
    }
    a
}

fn secret_env(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: optional.then_some(true),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn literal_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// Non-root, no privilege escalation, no capabilities; `uid` for an image whose default user is
/// root (the postgres images start as root and drop to `postgres` in their entrypoint).
fn restricted(uid: Option<i64>) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: uid,
        run_as_group: uid,
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// The Job both the CronJob and the backup-now annotation run.
pub fn job_spec(backup: &Backup, inputs: &JobInputs) -> JobSpec {
    let mut env = vec![secret_env(
        "DATABASE_URL",
        &inputs.database_url.name,
        &inputs.database_url.key,
        false,
    )];
    let bundle = VolumeMount {
        name: "berth".into(),
        mount_path: BUNDLE_PATH.into(),
        ..VolumeMount::default()
    };
    let mut volumes = vec![Volume {
        name: "berth".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut mounts = vec![bundle.clone()];
    if let Some(s3) = &backup.spec.destination.s3 {
        let creds = &s3.credentials_secret_ref.name;
        env.push(secret_env(
            "AWS_ACCESS_KEY_ID",
            creds,
            "AWS_ACCESS_KEY_ID",
            false,
        ));
        env.push(secret_env(
            "AWS_SECRET_ACCESS_KEY",
            creds,
            "AWS_SECRET_ACCESS_KEY",
            false,
        ));
        env.push(secret_env(
            "AWS_SESSION_TOKEN",
            creds,
            "AWS_SESSION_TOKEN",
            true,
        ));
        if !s3.endpoint.is_empty() {
            env.push(literal_env("AWS_ENDPOINT_URL", &s3.endpoint));
        }
        if !s3.region.is_empty() {
            env.push(literal_env("AWS_REGION", &s3.region));
        }
    } else {
        volumes.push(Volume {
            name: "backups".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc_name(backup),
                read_only: None,
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "backups".into(),
            mount_path: MOUNT_PATH.into(),
            ..VolumeMount::default()
        });
    }
    let stack = inputs.stack.as_deref();
    JobSpec {
        backoff_limit: Some(0),
        active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels(backup, stack)),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                security_context: Some(PodSecurityContext {
                    fs_group: Some(POSTGRES_UID),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        localhost_profile: None,
                    }),
                    ..PodSecurityContext::default()
                }),
                // berth's image copies berth, its loader and libraries into the emptyDir ...
                init_containers: Some(vec![Container {
                    name: "berth".into(),
                    image: Some(inputs.image.clone()),
                    command: Some(vec!["/usr/local/bin/berth".into()]),
                    args: Some(vec![
                        "backup".into(),
                        "bundle".into(),
                        "--to".into(),
                        BUNDLE_PATH.into(),
                    ]),
                    volume_mounts: Some(vec![bundle]),
                    security_context: Some(restricted(None)),
                    ..Container::default()
                }]),
                // ... and the PostgreSQL image runs it, so its own pg_dump makes the dump.
                containers: vec![Container {
                    name: "backup".into(),
                    image: Some(inputs.dump_image.clone()),
                    command: Some(super::bundle::command(BUNDLE_PATH)),
                    args: Some(run_args(backup)),
                    env: Some(env),
                    volume_mounts: Some(mounts),
                    termination_message_path: Some(REPORT_PATH.into()),
                    termination_message_policy: Some("File".into()),
                    security_context: Some(restricted(Some(POSTGRES_UID))),
                    ..Container::default()
                }],
                volumes: Some(volumes),
                ..PodSpec::default()
            }),
        },
        ..JobSpec::default()
    }
}

/// The CronJob of a Backup, named like it.
pub fn cron_job(backup: &Backup, inputs: &JobInputs) -> CronJob {
    let stack = inputs.stack.as_deref();
    CronJob {
        metadata: meta(backup, backup.name_any(), stack),
        spec: Some(CronJobSpec {
            schedule: backup.spec.schedule.clone(),
            time_zone: Some(backup.spec.time_zone.clone()),
            suspend: Some(backup.spec.suspend),
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(HISTORY_LIMIT),
            failed_jobs_history_limit: Some(HISTORY_LIMIT),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(backup, stack)),
                    ..ObjectMeta::default()
                }),
                spec: Some(job_spec(backup, inputs)),
            },
            ..CronJobSpec::default()
        }),
        status: None,
    }
}

/// A short stable hash of an annotation value (FNV-1a, 10 hex digits): a label value and a
/// Job name suffix.
pub fn value_hash(value: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in value.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

/// The value of the backup-now annotation, when set.
pub fn backup_now_value(backup: &Backup) -> Option<&str> {
    backup
        .metadata
        .annotations
        .as_ref()?
        .get(BACKUP_NOW_ANNOTATION)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
}

/// The Job a backup-now value starts; its name is fixed by the value, so it is created once.
pub fn now_job(backup: &Backup, inputs: &JobInputs, value: &str) -> Job {
    let hash = value_hash(value);
    let mut m = meta(
        backup,
        format!("{}-now-{hash}", backup.name_any()),
        inputs.stack.as_deref(),
    );
    if let Some(l) = m.labels.as_mut() {
        l.insert(BACKUP_NOW_LABEL.into(), hash);
    }
    Job {
        metadata: m,
        spec: Some(job_spec(backup, inputs)),
        status: None,
    }
}

/// Whether a Job for this backup-now value exists already.
pub fn now_job_exists(jobs: &[Job], value: &str) -> bool {
    let hash = value_hash(value);
    jobs.iter()
        .any(|j| j.labels().get(BACKUP_NOW_LABEL) == Some(&hash))
}

/// Reads a Job and the report its pod left (pods matched by the `job-name` label).
pub fn observe(job: &Job, pods: &[Pod]) -> ObservedJob {
    let name = job.name_any();
    let st = job.status.clone().unwrap_or_default();
    let report = pods
        .iter()
        .filter(|p| {
            p.labels().get("batch.kubernetes.io/job-name") == Some(&name)
                || p.labels().get("job-name") == Some(&name)
        })
        .filter_map(|p| {
            p.status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        })
        .find_map(|m| serde_json::from_str::<RunReport>(&m).ok());
    let conditions = st.conditions.unwrap_or_default();
    let cond = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    let failed_cond = cond("Failed");
    let succeeded = cond("Complete").is_some() || st.succeeded.unwrap_or(0) > 0;
    let failed = !succeeded && (failed_cond.is_some() || st.failed.unwrap_or(0) > 0);
    let completed = st.completion_time.as_ref().map(from_time).or_else(|| {
        failed_cond
            .and_then(|c| c.last_transition_time.as_ref())
            .map(from_time)
    });
    let failure = failed.then(|| {
        report
            .as_ref()
            .and_then(|r| r.error.clone())
            .or_else(|| failed_cond.and_then(|c| c.message.clone()))
            .unwrap_or_else(|| "the backup pod failed; see its logs".into())
    });
    ObservedJob {
        name,
        created: job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(from_time)
            .or(st.start_time.as_ref().map(from_time)),
        completed,
        active: st.active.unwrap_or(0) > 0 && !succeeded && !failed,
        succeeded,
        failed,
        failure,
        report,
    }
}
