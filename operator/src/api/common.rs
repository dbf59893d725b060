//! Types shared by several kinds: environment, health checks, resources, references.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every berth kind.
pub const GROUP: &str = "berth.dev";
/// The API version of every berth kind.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "berth.dev/v1alpha1";

/// A key of a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (same namespace as the object that refers to it).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A whole Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret (same namespace as the object that refers to it).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One environment variable: a literal `value` or a `secretKeyRef`, exactly one of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.secretKeyRef)").message("exactly one of value or secretKeyRef must be set"))]
pub struct EnvVar {
    /// Variable name, as a process sees it (letters, digits, `_`, `-`, `.`; not starting with a digit).
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z_.-][A-Za-z0-9_.-]*$")
    )]
    pub name: String,
    /// Literal value. Never put credentials here: use `secretKeyRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Take the value from a key of a Secret in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// An HTTP health check; readiness, liveness and startup probes on Kubernetes, a container
/// health check and the rollout gate on a Docker host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// HTTP path that answers 2xx or 3xx when the process is healthy.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// Port to probe; defaults to the component's own port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Seconds between checks.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: i32,
    /// Seconds after which one check counts as failed.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: i32,
    /// Consecutive failures after which the process is unhealthy.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
    /// Seconds a starting process is given before failures count.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub start_period_seconds: i32,
}

fn default_interval() -> i32 {
    10
}
fn default_timeout() -> i32 {
    5
}
fn default_failure_threshold() -> i32 {
    3
}

impl HealthCheck {
    /// A health check on `path` with the documented defaults.
    pub fn on_path(path: &str) -> Self {
        HealthCheck {
            path: path.to_string(),
            port: None,
            interval_seconds: default_interval(),
            timeout_seconds: default_timeout(),
            failure_threshold: default_failure_threshold(),
            start_period_seconds: 0,
        }
    }
}

/// CPU and memory for one container. Both are Kubernetes quantities; each is used as request and
/// limit for memory, and as request (no limit, to avoid throttling) for CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU, e.g. `500m` or `2`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "int_or_string"
    )]
    #[schemars(schema_with = "quantity_schema")]
    pub cpu: Option<String>,
    /// Memory, e.g. `512Mi` or `2Gi`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "int_or_string"
    )]
    #[schemars(schema_with = "quantity_schema")]
    pub memory: Option<String>,
}

/// An externally managed server whose URL is kept in a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalUrl {
    /// The Secret key that holds the connection URL (`postgres://…`, `redis://…`, `rediss://…`).
    pub url_secret_ref: SecretKeyRef,
}

/// Kubernetes accepts quantities written as numbers (`cpu: 2`) as well as strings.
fn quantity_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "nullable": true,
        "pattern": crate::api::patterns::QUANTITY,
    })
}

fn int_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Int(i64),
        Float(f64),
        Str(String),
    }
    Ok(Option::<IntOrString>::deserialize(d)?.map(|v| match v {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::Float(f) => f.to_string(),
        IntOrString::Str(s) => s,
    }))
}

/// What runs in one container: image, entrypoint, arguments, environment and resources. The
/// api, a stack's workers and services, and a Worker flatten it into their own fields, so the YAML writes
/// `image`, `env`… directly on them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    /// Container image, e.g. `ghcr.io/acme/api:1.4.2`.
    #[schemars(length(min = 1, max = 512))]
    #[schemars(regex(pattern = crate::api::patterns::IMAGE))]
    pub image: String,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables. `DATABASE_URL` and `REDIS_URL` are injected by berth from the
    /// stack's PostgreSQL and Redis (a Worker's from its `appStackRef` or `queue.redis`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvVar>,
    /// CPU and memory per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// The api, a stack's workers and services, and a Worker read their container fields
/// (`spec.image`…) as their own: `container_fields!(ApiSpec)` beside each of them.
macro_rules! container_fields {
    ($($kind:ty),*) => {$(
        impl std::ops::Deref for $kind {
            type Target = $crate::api::common::ContainerSpec;
            fn deref(&self) -> &$crate::api::common::ContainerSpec {
                &self.container
            }
        }
        impl std::ops::DerefMut for $kind {
            fn deref_mut(&mut self) -> &mut $crate::api::common::ContainerSpec {
                &mut self.container
            }
        }
    )*};
}
pub(crate) use container_fields;
