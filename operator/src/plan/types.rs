//! The plan's vocabulary: what should exist, independent of where it runs.
//!
//! Everything here is plain data (`Serialize` so it can be hashed, printed and compared).
//! A backend maps each type one-to-one onto its own objects; it never decides anything.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::api::common::{Resources, SecretKeyRef};
use crate::api::{BackupSpec, CertificateSpec, WorkerSpec};

/// Everything one AppStack should produce.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StackPlan {
    /// The stack's name (`metadata.name`).
    pub stack: String,
    /// Long-running processes, in a stable order: api, postgres, redis, then services by name.
    pub components: Vec<Component>,
    /// Credentials berth generates once and never rotates.
    pub secrets: Vec<GeneratedSecret>,
    /// How the api is reached from outside; `None` without `spec.domain`.
    pub exposure: Option<Exposure>,
    /// Who may open connections to whom; everything not listed is denied.
    pub network: Vec<NetworkRule>,
    /// berth objects the stack owns (Workers, a Certificate, a Backup).
    pub children: Children,
    /// Where the stack answers (`https://domain`), when it has a domain.
    pub url: Option<String>,
}

impl StackPlan {
    /// The component with this name.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// The role of a component; decides labels, network rules and status kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    /// The HTTP api, the only component exposed.
    Api,
    /// The in-stack PostgreSQL.
    Postgres,
    /// The in-stack Redis.
    Redis,
    /// An extra private service.
    Service,
    /// A queue consumer (from a Worker object).
    Worker,
}

impl ComponentKind {
    /// The lowercase name used in labels and status.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Api => "api",
            ComponentKind::Postgres => "postgres",
            ComponentKind::Redis => "redis",
            ComponentKind::Service => "service",
            ComponentKind::Worker => "worker",
        }
    }
}

/// One long-running process with its replicas.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Component {
    /// Name inside the stack (`api`, `postgres`, `redis`, a service or worker name).
    pub name: String,
    /// What it is.
    pub kind: ComponentKind,
    /// The name other components use to reach it: a Kubernetes Service name, a Docker network
    /// alias (`<stack>-<name>`).
    pub host: String,
    /// Container image.
    pub image: String,
    /// Replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    /// Replaces the image's arguments when not empty.
    pub args: Vec<String>,
    /// Environment, in order; values are never secret material.
    pub env: Vec<Env>,
    /// The port it serves on, if any.
    pub port: Option<Port>,
    /// How health is checked; `None` means the process being up is all there is to check.
    pub health: Option<Health>,
    /// Wanted replicas.
    pub replicas: i32,
    /// A persistent data volume.
    pub storage: Option<Storage>,
    /// CPU and memory (memory is request and limit, CPU a request only).
    pub resources: Option<Resources>,
    /// Numeric user and group to run as, when the image needs one to run unprivileged.
    pub user: Option<User>,
    /// Writable scratch directories (the root filesystem is read-only).
    pub scratch_paths: Vec<String>,
    /// What must accept connections before this component starts.
    pub depends_on: Vec<Dependency>,
    /// Seconds a stopping replica gets after SIGTERM, when not the platform default.
    pub termination_grace_period_seconds: Option<i64>,
    /// A stable hash of everything above; changes exactly when the component must be redeployed.
    pub spec_hash: String,
}

/// One environment variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Env {
    /// The variable's name.
    pub name: String,
    /// Where its value comes from.
    pub value: EnvValue,
}

/// The source of an environment variable's value. Secret material is only ever referenced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EnvValue {
    /// A literal, non-secret value.
    Literal(String),
    /// A key of a Secret the user manages.
    Secret(SecretKeyRef),
    /// A key of a secret berth generates (one of [`StackPlan::secrets`]).
    Generated(SecretKeyRef),
}

/// A TCP port a component listens on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Port {
    /// Port name (`http`, `postgres`, `redis`).
    pub name: String,
    /// Port number inside the container, also the port others connect to.
    pub number: i32,
}

/// How health is checked and how patient to be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The check itself.
    pub check: HealthCheckKind,
    /// Seconds between checks.
    pub interval_seconds: i32,
    /// Seconds after which one check fails.
    pub timeout_seconds: i32,
    /// Consecutive failures that make it unhealthy.
    pub failure_threshold: i32,
    /// Seconds given to a starting process before failures count.
    pub start_period_seconds: i32,
}

/// A health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HealthCheckKind {
    /// HTTP GET answering 2xx/3xx.
    Http { path: String, port: i32 },
    /// A TCP connection is accepted.
    Tcp { port: i32 },
    /// A command run inside the container exits 0 (environment of the container available).
    Exec { command: Vec<String> },
}

/// A persistent volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Storage {
    /// Size as a quantity (`10Gi`).
    pub size: String,
    /// Where it is mounted in the container.
    pub mount_path: String,
}

/// A numeric user and group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    pub uid: i64,
    pub gid: i64,
}

/// Something that must accept connections before a component starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dependency {
    /// `postgres` or `redis`.
    pub name: String,
    /// Whether it runs in the stack (false: an external server).
    pub in_stack: bool,
    /// An image that has the client tool to check it (`pg_isready`, `redis-cli`).
    pub image: String,
    /// A one-shot check, exit 0 when the dependency accepts connections. It reads the URL from
    /// `env` (a shell is used so the URL is never written into the command line of the object).
    pub check: Vec<String>,
    /// The environment the check needs (the connection URL).
    pub env: Vec<Env>,
    /// The user to run the check as (the official images' unprivileged user).
    pub user: Option<User>,
}

/// A secret berth creates once (if absent) and never overwrites.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GeneratedSecret {
    /// Name of the secret (`<stack>-postgres-credentials`).
    pub name: String,
    /// The component whose credentials these are.
    pub component: String,
    /// Keys, in order; templates may refer to keys listed before them.
    pub entries: Vec<SecretEntry>,
}

/// One key of a generated secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SecretEntry {
    pub key: String,
    pub value: SecretValue,
}

/// How a generated key's value is made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SecretValue {
    /// A fixed, non-secret value (a user name, a database name).
    Literal(String),
    /// `bytes` random bytes, hex-encoded (URL-safe, so it can sit in a URL unescaped).
    Random { bytes: usize },
    /// A string with `{key}` placeholders replaced by earlier keys of the same secret.
    Template(String),
}

/// How the api is exposed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exposure {
    /// The public host name.
    pub domain: String,
    /// Where the certificate comes from; `None` serves plain HTTP.
    pub tls: Option<TlsSource>,
    /// The component that receives the traffic (always the api).
    pub target: String,
    /// Its port.
    pub target_port: i32,
    /// Largest request body in bytes.
    pub max_body_bytes: u64,
    /// Path prefixes, longest first (the order a proxy must try them in).
    pub routes: Vec<RoutePlan>,
}

/// The certificate serving the domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsSource {
    /// The berth Certificate.
    pub certificate: String,
    /// The secret holding `tls.crt` and `tls.key`.
    pub secret_name: String,
    /// True when the stack owns the Certificate (the `tls.issuer` shorthand).
    pub managed: bool,
}

/// One path prefix routed to the api.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoutePlan {
    /// Path prefix, starting with `/`.
    pub path: String,
    /// Per client IP limit.
    pub rate_limit: Option<RateLimitPlan>,
    /// Long-lived upgraded connections: long timeouts.
    pub websocket: bool,
    /// A DNS-label slug unique within the stack, for names of per-route objects.
    pub slug: String,
}

/// A token bucket per client IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimitPlan {
    pub requests_per_second: i32,
    pub burst: i32,
}

/// Who may connect to a component. Everything not allowed by some rule is denied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkRule {
    /// The component receiving connections.
    pub to: String,
    /// Its port.
    pub port: i32,
    /// Who may connect.
    pub from: Vec<Peer>,
}

/// A source of connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    /// The reverse proxy / ingress controller.
    Proxy,
    /// Every component of this kind in the stack (workers included, whoever runs them).
    Kind(ComponentKind),
    /// The pods of the stack's scheduled backups (`app.kubernetes.io/component: backup`).
    Backup,
}

/// berth objects owned by the stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Children {
    /// Workers by name (`<stack>-<worker>`), in spec order.
    pub workers: Vec<(String, WorkerSpec)>,
    /// The Certificate `<stack>-tls` for the `tls.issuer` shorthand.
    pub certificate: Option<(String, CertificateSpec)>,
    /// The Backup `<stack>`.
    pub backup: Option<(String, BackupSpec)>,
}

/// What the plan of a standalone Worker produces.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerPlan {
    /// The Worker's name.
    pub worker: String,
    /// The stack it belongs to (`appStackRef`), whose network rules it falls under.
    pub stack: Option<String>,
    /// The process (kind Worker, no port).
    pub component: Component,
}

/// Secret values read or generated for one secret, by key (never logged).
pub type SecretData = BTreeMap<String, String>;

/// The official postgres and redis images run as this user and group (`postgres`/`redis`).
pub const OFFICIAL_IMAGE_USER: User = User { uid: 999, gid: 999 };
