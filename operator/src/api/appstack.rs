//! `AppStack`: one web application stack (api, workers, PostgreSQL, Redis, extra services,
//! ingress with TLS, backups).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backup::{BackupDestination, Compression, DumpFormat, Retention};
use super::certificate::CertIssuer;
use super::common::{ContainerSpec, ExternalUrl, HealthCheck, Resources};
use super::worker::{QueueSpec, Scaling};

/// The desired state of one application stack.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "AppStack",
    plural = "appstacks",
    namespaced,
    status = "AppStackStatus",
    shortname = "stack",
    category = "berth",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
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
#[x_kube(validation = Rule::new("!has(self.tls) || has(self.domain)").message("tls needs spec.domain: set the domain the certificate is for, or remove tls"))]
#[x_kube(validation = Rule::new("!has(self.workers) || size(self.workers) == 0 || has(self.redis)").message("workers need a Redis: add spec.redis to the stack (in-stack or external)"))]
#[x_kube(validation = Rule::new("!has(self.backup) || has(self.postgres)").message("backup needs spec.postgres: there is no database in this stack to back up"))]
#[x_kube(validation = Rule::new("!has(self.workers) || !has(self.services) || self.workers.all(w, !self.services.exists(s, s.name == w.name))").message("a worker and a service share a name: worker and service names must be unique in a stack"))]
pub struct AppStackSpec {
    /// Public DNS name of the stack. Without it nothing is exposed outside the cluster or host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(pattern = crate::api::patterns::DNS_NAME))]
    pub domain: Option<String>,
    /// TLS for `domain`: a reference to a berth Certificate, or an issuer from which berth creates
    /// a Certificate named `<stack>-tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<StackTls>,
    /// The HTTP API: the one component the proxy or ingress exposes.
    pub api: ApiSpec,
    /// Queue consumers; each becomes a child Worker named `<stack>-<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub workers: Vec<StackWorker>,
    /// PostgreSQL: run in the stack (`version` or `image`), or `external`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,
    /// Redis: run in the stack (`version` or `image`), or `external`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// Extra long-running services on the stack's private network (a vector database, a model
    /// server…). They are never exposed outside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub services: Vec<ServiceSpec>,
    /// Scheduled pg_dump of the stack's database; becomes a child Backup named `<stack>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<StackBackup>,
}

/// TLS for the stack's domain: exactly one of `certificateRef` or `issuer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.certificateRef) != has(self.issuer)").message("exactly one of certificateRef or issuer must be set"))]
pub struct StackTls {
    /// Name of a berth Certificate in the same namespace whose Secret serves the domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(pattern = crate::api::patterns::DNS_NAME))]
    pub certificate_ref: Option<String>,
    /// Shorthand: berth creates the Certificate `<stack>-tls` for `domain` with this issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<CertIssuer>,
}

/// The API component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiSpec {
    // image, command, args, env, resources (api/common.rs)
    #[serde(flatten)]
    pub container: ContainerSpec,
    /// Number of replicas.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Port the process listens on for HTTP.
    #[serde(default = "default_api_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP health check: readiness, liveness and startup probes, and the rollout gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Paths through which the proxy or ingress reaches the api; default: one route `/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["path"]))]
    pub routes: Vec<Route>,
    /// Largest request body the proxy accepts, as a quantity (e.g. `500Mi`); default `1Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::patterns::QUANTITY))]
    pub max_body_size: Option<String>,
}

super::common::container_fields!(ApiSpec, StackWorker, ServiceSpec);

fn one() -> i32 {
    1
}
fn default_api_port() -> i32 {
    8080
}

/// One path the proxy or ingress routes to the api.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Path prefix, starting with `/`. The longest matching prefix wins.
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/"))]
    pub path: String,
    /// Per client IP request rate limit for this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Long-lived WebSocket connections: upgrade headers and long timeouts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub websocket: bool,
}

/// A token-bucket rate limit per client IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second.
    #[schemars(range(min = 1, max = 100000))]
    pub requests_per_second: i32,
    /// Requests allowed above the rate in a burst.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000))]
    pub burst: i32,
}

/// A queue consumer inside an AppStack; becomes the Worker `<stack>-<name>` with the stack's
/// Redis and `DATABASE_URL`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.name in ['api', 'postgres', 'redis', 'proxy'])").message("this name is used by berth itself (reserved: api, postgres, redis, proxy); choose another name"))]
pub struct StackWorker {
    /// Name inside the stack (a DNS label).
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    // image, command, args, env, resources (api/common.rs)
    #[serde(flatten)]
    pub container: ContainerSpec,
    /// The queue this worker consumes; Redis is the stack's own unless `queue.redis` is given.
    pub queue: QueueSpec,
    /// Queue-depth autoscaling; without it `replicas` is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,
    /// Replica count when `scaling` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Seconds a stopping replica gets to finish its job after SIGTERM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub termination_grace_period_seconds: Option<i64>,
}

/// The stack's PostgreSQL: in the stack (`version` or `image`, `database`, `storage`), or
/// `external` alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.external) || (!has(self.version) && !has(self.image) && !has(self.database) && !has(self.storage))").message("external excludes version, image, database and storage: an external database is not deployed by berth"))]
#[x_kube(validation = Rule::new("!(has(self.version) && has(self.image))").message("set either version or image, not both"))]
pub struct PostgresSpec {
    /// Major version of the official `postgres` image (e.g. `"16"`); default `"16"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?$"))]
    pub version: Option<String>,
    /// Full image reference instead of `version`. It must follow the official image's
    /// conventions (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::patterns::IMAGE))]
    pub image: Option<String>,
    /// Database name; default: the stack's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    pub database: Option<String>,
    /// Size of the data volume, a quantity (default `10Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::patterns::QUANTITY))]
    pub storage: Option<String>,
    /// CPU and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// A managed database outside the stack; nothing is deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalUrl>,
}

/// The stack's Redis: in the stack (`version` or `image`, `maxMemory`), or `external` alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.external) || (!has(self.version) && !has(self.image) && !has(self.maxMemory) && !has(self.storage))").message("external excludes version, image, maxMemory and storage: an external Redis is not deployed by berth"))]
#[x_kube(validation = Rule::new("!(has(self.version) && has(self.image))").message("set either version or image, not both"))]
pub struct RedisSpec {
    /// Major version of the official `redis` image (e.g. `"7"`); default `"7"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?$"))]
    pub version: Option<String>,
    /// Full image reference instead of `version`; it must accept `redis-server` arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::patterns::IMAGE))]
    pub image: Option<String>,
    /// `maxmemory` of the server, a quantity (e.g. `256Mi`); the policy is `noeviction` so
    /// queued jobs are never evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::patterns::QUANTITY))]
    pub max_memory: Option<String>,
    /// Size of a volume for append-only persistence; without it Redis keeps no data on restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::patterns::QUANTITY))]
    pub storage: Option<String>,
    /// CPU and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// A managed Redis outside the stack; nothing is deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalUrl>,
}

/// An extra long-running service on the stack's private network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Name inside the stack (a DNS label); other components reach it at this host name.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    // image, command, args, env, resources (api/common.rs)
    #[serde(flatten)]
    pub container: ContainerSpec,
    /// Port the service listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Size of a persistent data volume, a quantity; makes it a StatefulSet on Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::patterns::QUANTITY))]
    pub storage: Option<String>,
    /// Where the data volume is mounted (default `/data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub mount_path: Option<String>,
    /// HTTP health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// Backups of the stack's database; becomes the child Backup `<stack>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StackBackup {
    /// Cron schedule with 5 fields (minute hour day-of-month month day-of-week).
    #[schemars(regex(pattern = crate::api::patterns::CRON))]
    pub schedule: String,
    /// IANA time zone of the schedule.
    #[serde(default = "super::backup::default_time_zone")]
    pub time_zone: String,
    /// Pause scheduling without deleting anything.
    #[serde(default)]
    pub suspend: bool,
    /// Where dumps go; default a volume of `10Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BackupDestination>,
    /// pg_dump format.
    #[serde(default)]
    pub format: DumpFormat,
    /// Compression of the dump file.
    #[serde(default)]
    pub compression: Compression,
    /// Which backups to keep. Absent: `keepLast: 7`.
    #[serde(default)]
    pub retention: Retention,
    /// Restore each new backup into a scratch database and check it.
    #[serde(default)]
    pub verify: bool,
}

/// The observed state of an AppStack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppStackStatus {
    /// Summary: Ready, Progressing, Degraded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Where the stack answers, when it has a domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// One entry per api, worker, postgres, redis, service and proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentStatus>,
    /// Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Summary state of a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Everything runs as specified.
    Ready,
    /// Changes are being rolled out.
    Progressing,
    /// Something that worked has stopped working.
    Degraded,
    /// The spec cannot be carried out; see the Ready condition.
    Failed,
}

/// State of one component of a stack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Component name (`api`, `postgres`, `redis`, a worker or service name, `proxy`).
    pub name: String,
    /// One of api, worker, postgres, redis, service, proxy.
    pub kind: String,
    /// Replicas wanted.
    pub desired_replicas: i32,
    /// Replicas ready.
    pub ready_replicas: i32,
    /// Image running.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Why it is not ready, when it is not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
