//! The Docker host backend: the same AppStack and Worker manifests that run on Kubernetes,
//! applied to one Docker host through the Docker Engine API (bollard).
//!
//! Data flows one way, as everywhere in berth: manifests → [`crate::plan`] → [`desired`] (what
//! containers, networks and volumes should exist; pure) → [`converge`] (observed vs desired →
//! actions; pure) → [`engine`] (bollard calls only) → [`status`] (the same status shape as on
//! Kubernetes, written to the state directory).
//!
//! - [`proxy`]: the one nginx of the host, its configuration rendered from the plan's exposure
//!   (pure) and applied with `nginx -t && nginx -s reload` (no dropped connections).
//! - [`manifests`]: the folder read file by file, keeping the last good version of a broken
//!   file in force (a typo never takes a running stack down).
//! - [`probe`]: HTTP and TCP health checks run by berth itself against the container's address
//!   on the stack's network (images need no wget or curl).
//! - [`state`]: the state directory: generated credentials (mode 0600, never printed), status
//!   files, the proxy configuration.
//! - [`run`]: the reconcile loop, driven by Docker events and manifest-folder changes plus a slow
//!   resync; its seams: [`run::ReplicaSource`] (how many worker replicas: the autoscale engine
//!   plugs in there) and [`run::HostHook`] (called after every pass: the Backup and Certificate
//!   schedulers plug in there).
//!
//! Nothing here decides policy: images, commands, env, health, dependencies, exposure, routes
//! and limits all come from the plan. What is Docker-specific is only how they are expressed:
//! container names `<host>-<n>`, labels, networks, restart policy, nginx for the proxy.

pub mod autoscale;
pub mod backup_exec;
pub mod backups;
pub mod broken;
pub mod certs;
pub mod converge;
pub mod desired;
pub mod engine;
pub mod hook;
pub mod manifests;
pub mod probe;
pub mod proxy;
pub mod run;
pub mod state;
pub mod status;

/// Labels berth puts on every container, network and volume it creates.
pub mod labels {
    /// Which berth host instance owns it (`berth` unless `--instance` is given); everything
    /// berth lists is filtered by it, so two instances (or parallel tests) never touch each
    /// other's objects.
    pub const INSTANCE: &str = "berth.dev/instance";
    /// The object it was made for: `appstack/<name>` or `worker/<name>`.
    pub const OBJECT: &str = "berth.dev/object";
    /// The stack it belongs to.
    pub const STACK: &str = "berth.dev/stack";
    /// The component's name in the stack (`api`, `postgres`, a worker or service name).
    pub const COMPONENT: &str = "berth.dev/component";
    /// The component's kind (`api`, `postgres`, `redis`, `service`, `worker`, `proxy`).
    pub const KIND: &str = "berth.dev/kind";
    /// The replica number (the `<n>` of the container name).
    pub const REPLICA: &str = "berth.dev/replica";
    /// The plan's spec hash the container was made from.
    pub const SPEC_HASH: &str = "berth.dev/spec-hash";
    /// The replica group: the component's host name, prefix of its container names.
    pub const GROUP: &str = "berth.dev/group";
}

/// The default instance name: the proxy is `berth-proxy`.
pub const DEFAULT_INSTANCE: &str = "berth";
/// The default proxy image.
pub const DEFAULT_PROXY_IMAGE: &str = "nginx:1.27";
