//! `Backup`: scheduled pg_dump with retention and verification.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{SecretKeyRef, SecretRef};

/// The desired backup schedule of one PostgreSQL database.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Backup",
    plural = "backups",
    namespaced,
    status = "BackupStatus",
    shortname = "bbackup",
    category = "berth",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.postgresVersion) && has(self.image))").message("set either postgresVersion or image, not both"))]
pub struct BackupSpec {
    /// Cron schedule with 5 fields (minute hour day-of-month month day-of-week).
    #[schemars(length(min = 1, max = 100), regex(pattern = crate::api::patterns::CRON))]
    pub schedule: String,
    /// IANA time zone of the schedule, e.g. `Europe/Berlin`.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Pause scheduling without deleting anything.
    #[serde(default)]
    pub suspend: bool,
    /// The database to dump.
    pub database: BackupDatabase,
    /// Where dumps are kept.
    pub destination: BackupDestination,
    /// pg_dump format.
    #[serde(default)]
    pub format: DumpFormat,
    /// Compression of the dump file.
    #[serde(default)]
    pub compression: Compression,
    /// Which backups to keep; the newest good backup is never deleted. Absent: `keepLast: 7`.
    #[serde(default)]
    pub retention: Retention,
    /// Restore each new backup into a scratch database, check it, then drop it.
    #[serde(default)]
    pub verify: bool,
    /// Major version of the official `postgres` image whose `pg_dump` makes the dump on
    /// Kubernetes (e.g. `"17"`): pg_dump cannot dump a newer server than itself. Default: the
    /// AppStack's PostgreSQL image for an in-stack database, else `"18"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,3}$"))]
    pub postgres_version: Option<String>,
    /// Full image reference instead of `postgresVersion`: any image with `pg_dump` and `psql` on
    /// its PATH and glibc (berth's binary is copied into it and run there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

/// The default schedule time zone.
pub fn default_time_zone() -> String {
    "UTC".into()
}

/// Exactly one of `appStackRef` or `urlSecretRef`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.appStackRef) != has(self.urlSecretRef)").message("exactly one of appStackRef or urlSecretRef must be set"))]
pub struct BackupDatabase {
    /// Dump the in-stack PostgreSQL (or external database) of this AppStack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(pattern = crate::api::patterns::DNS_NAME))]
    pub app_stack_ref: Option<String>,
    /// A Secret key holding a `postgres://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
}

/// Exactly one of `volume` or `s3`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.volume) != has(self.s3)").message("exactly one of volume or s3 must be set"))]
pub struct BackupDestination {
    /// A PersistentVolumeClaim (Kubernetes) or a named volume (Docker host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeDestination>,
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
}

/// A volume for backups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDestination {
    /// Size of the volume, a quantity (e.g. `20Gi`).
    #[schemars(regex(pattern = crate::api::patterns::QUANTITY))]
    pub size: String,
    /// Storage class of the claim (Kubernetes); default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// An S3-compatible bucket for backups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// Bucket name.
    #[schemars(length(min = 3, max = 63), regex(pattern = crate::api::patterns::S3_BUCKET))]
    pub bucket: String,
    /// Key prefix, e.g. `vidgen/`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(regex(pattern = crate::api::patterns::NO_LEADING_SLASH))]
    pub prefix: String,
    /// Endpoint URL of an S3-compatible service; empty for AWS.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(regex(pattern = crate::api::patterns::URL_OR_EMPTY))]
    pub endpoint: String,
    /// Region; empty for the service's default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials_secret_ref: SecretRef,
}

/// pg_dump output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DumpFormat {
    /// pg_dump's custom archive format (`-Fc`), restored with pg_restore.
    #[default]
    Custom,
    /// Plain SQL, restored with psql.
    Plain,
}

/// Compression of the dump file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd (`.zst`).
    #[default]
    Zstd,
    /// gzip (`.gz`).
    Gzip,
    /// None.
    None,
}

/// Which backups to keep: either or both rules; a backup is deleted only when a rule allows it,
/// and the newest good backup is never deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.keepLast) || has(self.maxAge)").message("set keepLast, maxAge or both"))]
pub struct Retention {
    /// Keep at most this many good backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub keep_last: Option<i32>,
    /// Delete good backups older than this duration (e.g. `30d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::patterns::DURATION))]
    pub max_age: Option<String>,
}

impl Default for Retention {
    /// `keepLast: 7`, what API.md gives a Backup that says nothing about retention.
    fn default() -> Self {
        Retention {
            keep_last: Some(7),
            max_age: None,
        }
    }
}

/// The observed state of a Backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// When a backup was last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When a backup last succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// The newest good backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupRecord>,
    /// The kept backups, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<BackupRecord>,
    /// Ready (the last run succeeded) and Running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One backup file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// File name, e.g. `vidgen-20261122T020000Z.dump.zst`.
    pub name: String,
    /// When the dump started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Size of the file.
    pub size_bytes: u64,
    /// Seconds the dump took.
    #[serde(default)]
    pub duration_seconds: f64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Whether a restore into a scratch database succeeded.
    #[serde(default)]
    pub verified: bool,
}
