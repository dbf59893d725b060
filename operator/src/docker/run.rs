//! The reconcile loop of a Docker host: one [`Host::pass`] reads the manifests, plans them,
//! lists what runs (three list calls) and does what [`converge`] decides. [`Host::run`] repeats
//! passes when something happens: a Docker event about this instance's containers or any
//! network, a change in the manifest folder, a removal finishing, and a slow periodic resync.
//! Idle, it makes no API writes.
//!
//! Seams for the engines other issues bring:
//! - [`ReplicaSource`] decides the replica count of each Worker; by default the spec's
//!   (`replicas`, else `scaling.minReplicas`); the autoscale engine plugs in here.
//! - [`HostHook`] runs after every pass with the engine, the desired state and the state
//!   directory, and tells the loop when it next needs to wake: the Backup scheduler
//!   (`backup::host`, with an injected clock) and Certificate renewal plug in here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::api::WorkerSpec;
use crate::manifest::{Document, LoadError};
use crate::plan::ComponentKind;

use super::converge::{decide, Decision, GroupSpec, Health, Removal, RemoveReason};
use super::desired::{self, desired_host, DesiredHost, Kind, ObjectKey};
use super::engine::{ContainerInfo, Engine, EngineError};
pub use super::hook::{HostHook, PassContext};
use super::labels;
use super::manifests::Manifests;
use super::probe::Prober;
use super::state::{StateDir, StateError};
use super::status::{self, Summary};

mod host_loop;
mod observe;
mod proxy_conf;
mod statuses;

use proxy_conf::clear_dir;

/// How long a replica taken out of the proxy keeps its connections before SIGTERM: the old
/// nginx workers finish their requests against it meanwhile.
pub const DRAIN: Duration = Duration::from_secs(2);
/// The slow periodic resync.
pub const RESYNC: Duration = Duration::from_secs(60);
/// How often the manifest folder's file list and modification times are compared.
pub const MANIFEST_CHECK: Duration = Duration::from_secs(2);
/// While something is changing, a pass at least this often (events usually come first).
pub const PROGRESS_RECHECK: Duration = Duration::from_secs(3);

/// Why the host could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Manifests(#[from] LoadError),
    #[error("proxy configuration rejected by nginx -t: {0}")]
    ProxyConfig(String),
}

/// Decides how many replicas a Worker runs.
pub trait ReplicaSource: Send + Sync {
    /// `planned`: the spec's count; `current`: replicas that exist now.
    fn replicas(&self, worker: &str, spec: &WorkerSpec, planned: i32, current: i32) -> i32;
}

/// The spec's count: `replicas`, else `scaling.minReplicas`.
pub struct SpecReplicas;

impl ReplicaSource for SpecReplicas {
    fn replicas(&self, _: &str, _: &WorkerSpec, planned: i32, _: i32) -> i32 {
        planned
    }
}

/// Options of `berth host run`.
#[derive(Clone, Debug)]
pub struct HostOptions {
    pub manifests: PathBuf,
    pub state_dir: PathBuf,
    pub instance: String,
    pub http: String,
    pub https: Option<String>,
    pub proxy_image: String,
    /// An empty manifest folder means "run nothing" (otherwise it removes nothing).
    pub allow_empty: bool,
}

/// What one pass did.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    pub created: Vec<String>,
    pub removing: Vec<String>,
    pub networks_created: Vec<String>,
    pub proxy_reloaded: bool,
    pub progressing: bool,
    /// Per object: the summary that became its status.
    pub summaries: BTreeMap<ObjectKey, Summary>,
}

impl PassReport {
    /// Nothing was created, removed or reloaded.
    pub fn is_noop(&self) -> bool {
        self.created.is_empty()
            && self.removing.is_empty()
            && self.networks_created.is_empty()
            && !self.proxy_reloaded
    }
}

/// A Docker host under berth's care.
pub struct Host {
    pub opts: HostOptions,
    pub engine: Engine,
    pub state: StateDir,
    replicas: Arc<dyn ReplicaSource>,
    hooks: Vec<Arc<dyn HostHook>>,
    stopping: Arc<Mutex<HashSet<String>>>,
    /// The proxy's files changed and nginx has not reloaded them yet.
    proxy_dirty: std::sync::atomic::AtomicBool,
    wake_tx: mpsc::UnboundedSender<()>,
    wake_rx: Option<mpsc::UnboundedReceiver<()>>,
    /// The state directory's lock, held by a reconciling host.
    _lock: Option<std::fs::File>,
    manifests: Manifests,
    /// Berth's own HTTP/TCP health checks.
    prober: Prober,
    /// What was last said about broken manifests (said again only when it changes).
    last_warning: Mutex<String>,
}

fn proxy_name(instance: &str) -> String {
    format!("{instance}-proxy")
}

impl Host {
    /// A host that reconciles: holds the state directory's lock.
    pub async fn new(opts: HostOptions) -> Result<Host, HostError> {
        let mut host = Host::unlocked(opts).await?;
        host._lock = Some(host.state.lock()?);
        Ok(host)
    }

    /// A host for `down` (which may run while a stopping `run` still holds the lock).
    pub async fn unlocked(opts: HostOptions) -> Result<Host, HostError> {
        let engine = Engine::open(&opts.instance).await?;
        let state = StateDir::open(&opts.state_dir)?;
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        let manifests = Manifests::new(&opts.manifests, opts.allow_empty, &state);
        Ok(Host {
            manifests,
            prober: Prober::new(wake_tx.clone(), Some(engine.clone())),
            last_warning: Mutex::default(),
            opts,
            engine,
            state,
            replicas: Arc::new(SpecReplicas),
            hooks: Vec::new(),
            stopping: Arc::default(),
            proxy_dirty: Default::default(),
            wake_tx,
            wake_rx: Some(wake_rx),
            _lock: None,
        })
    }

    /// Replaces how Worker replica counts are decided.
    pub fn with_replica_source(mut self, source: Arc<dyn ReplicaSource>) -> Self {
        self.replicas = source;
        self
    }

    /// Adds a hook run after every pass.
    pub fn with_hook(mut self, hook: Arc<dyn HostHook>) -> Self {
        self.hooks.push(hook);
        self
    }

    /// A handle that wakes the run loop for a pass (hooks whose background work ended, the autoscaler when a desired count changes).
    pub fn waker(&self) -> mpsc::UnboundedSender<()> {
        self.wake_tx.clone()
    }

    /// Containers being stopped in the background.
    pub fn stopping(&self) -> Vec<String> {
        self.stopping
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The desired state of the host, with worker replicas from the replica source.
    pub fn desired(&self, observed: &[ContainerInfo]) -> Result<DesiredHost, HostError> {
        Ok(self.desired_and_docs(observed)?.0)
    }

    fn desired_and_docs(
        &self,
        observed: &[ContainerInfo],
    ) -> Result<(DesiredHost, Vec<Document>), HostError> {
        let resolved = self.manifests.load(&self.state)?;
        self.warn_about(&resolved);
        let docs = resolved.docs;
        let mut state = self.state.clone();
        let mut host = desired_host(&docs, &mut state);
        host.held = resolved.held;
        host.hold = resolved.hold;
        host.broken = resolved.broken;
        for o in &mut host.objects {
            let Some(spec) = o.worker.clone() else {
                continue;
            };
            for g in &mut o.groups {
                let current = observed
                    .iter()
                    .filter(|c| c.label(labels::GROUP) == Some(g.name()))
                    .count() as i32;
                g.replicas = self
                    .replicas
                    .replicas(&o.key.name, &spec, g.replicas, current)
                    .max(0);
            }
        }
        Ok((host, docs))
    }

    /// Logs broken manifests and held removals once per change.
    fn warn_about(&self, r: &super::manifests::Resolved) {
        let mut lines: Vec<String> = r.broken.iter().flat_map(|b| b.errors.clone()).collect();
        lines.extend(r.hold.clone());
        let now = lines.join("\n");
        let Ok(mut last) = self.last_warning.lock() else {
            return;
        };
        if *last == now {
            return;
        }
        for b in &r.broken {
            for e in &b.errors {
                if b.kept {
                    warn!("{e} (running the last good version of the file)");
                } else {
                    warn!("{e}");
                }
            }
        }
        if let Some(h) = &r.hold {
            warn!("removing nothing: {h}");
        }
        if lines.is_empty() && !last.is_empty() {
            info!("manifests are all good again");
        }
        *last = now;
    }

    /// One reconcile pass.
    pub async fn pass(&self) -> Result<PassReport, HostError> {
        let mut report = PassReport::default();
        // Snapshot what is being stopped before listing: a replica whose removal finishes in
        // between is then either not listed or still known as stopping.
        let stopping: HashSet<String> = self.stopping().into_iter().collect();
        let containers = self.engine.containers().await?;
        let (desired, docs) = self.desired_and_docs(&containers)?;
        // Objects that could not be planned keep what runs, their stack's workers included.
        let protected: HashSet<String> = desired.errors.iter().map(|e| e.key.label()).collect();
        let protected_stacks: HashSet<&str> = desired
            .errors
            .iter()
            .filter(|e| e.key.kind == Kind::AppStack)
            .map(|e| e.key.name.as_str())
            .collect();
        let hold = desired.hold.is_some();

        // Networks and volumes first: containers need them.
        let networks = self.engine.networks().await?;
        let have_nets: HashSet<&str> = networks.iter().map(|n| n.name.as_str()).collect();
        let want_nets = desired::networks(&desired);
        for (name, (net, owner)) in &want_nets {
            if !have_nets.contains(name.as_str()) {
                info!(network = %name, "creating network");
                self.engine
                    .create_network(
                        name,
                        net.internal,
                        desired::object_labels(&self.opts.instance, owner),
                    )
                    .await?;
                report.networks_created.push(name.clone());
            }
        }
        let volumes: HashSet<String> = self
            .engine
            .volumes()
            .await?
            .into_iter()
            .map(|v| v.0)
            .collect();
        for o in &desired.objects {
            for v in &o.volumes {
                if !volumes.contains(v) {
                    info!(volume = %v, "creating volume");
                    self.engine
                        .create_volume(v, desired::object_labels(&self.opts.instance, &o.key))
                        .await?;
                }
            }
        }

        // Replicas by group.
        let mut by_group: HashMap<&str, Vec<&ContainerInfo>> = HashMap::new();
        for c in &containers {
            if stopping.contains(&c.name) {
                continue;
            }
            if let Some(g) = c.label(labels::GROUP) {
                by_group.entry(g).or_default().push(c);
            }
        }
        let observed = self.observe(&desired, &by_group).await;
        let healthy: HashSet<String> = observed
            .iter()
            .filter(|(_, rs)| rs.iter().any(|r| r.health == Health::Ready))
            .map(|(g, _)| g.clone())
            .collect();
        let mut decisions: HashMap<String, Decision> = HashMap::new();
        let mut errors: HashMap<String, String> = HashMap::new();
        let mut removals: Vec<(Removal, i64, bool)> = Vec::new();
        let mut creating = Vec::new();
        for g in desired.groups() {
            let blocked: Vec<String> = g
                .waits_for
                .iter()
                .filter(|w| !healthy.contains(*w))
                .cloned()
                .collect();
            let observed = observed.get(g.name()).cloned().unwrap_or_default();
            let d = decide(
                &GroupSpec {
                    hash: g.component.spec_hash.clone(),
                    replicas: g.replicas.max(0) as u32,
                    recreate: g.recreate,
                },
                &observed,
                &blocked,
            );
            for n in &d.create {
                let name = g.container_name(*n);
                info!(container = %name, image = %g.component.image, "creating replica");
                let body = desired::container_body(g, &self.opts.instance, *n);
                creating.push(async move {
                    let r = self
                        .engine
                        .run_container(&name, body, &g.networks[1..])
                        .await;
                    (g.name(), name, r)
                });
            }
            let drain = g.component.kind == ComponentKind::Api;
            for r in &d.remove {
                removals.push((r.clone(), g.stop_timeout(), drain));
            }
            decisions.insert(g.name().to_string(), d);
        }
        // Independent replicas (PostgreSQL and Redis, the replicas of a group) start together.
        for (group, name, r) in futures::future::join_all(creating).await {
            match r {
                Ok(()) => report.created.push(name),
                Err(e) => {
                    warn!(container = %name, error = %e, "cannot create replica");
                    // A half-made container is removed on the next pass (it never started).
                    errors.insert(group.to_string(), e.to_string());
                }
            }
        }

        // Containers of objects that are gone (not those of objects with a broken manifest).
        let groups: HashSet<&str> = desired.groups().map(|g| g.name()).collect();
        for c in &containers {
            if stopping.contains(&c.name) || c.label(labels::KIND) == Some("proxy") {
                continue;
            }
            let group = c.label(labels::GROUP).unwrap_or_default();
            let object = c.label(labels::OBJECT).unwrap_or_default();
            let stack = c.label(labels::STACK).unwrap_or_default();
            if !hold
                && !groups.contains(group)
                && !protected.contains(object)
                && !protected_stacks.contains(stack)
            {
                removals.push((
                    Removal {
                        name: c.name.clone(),
                        reason: RemoveReason::Orphan,
                    },
                    desired::DEFAULT_STOP_TIMEOUT,
                    false,
                ));
            }
        }

        // The proxy, with the replicas that stay.
        report.proxy_reloaded = self.proxy(&desired, &decisions, &containers).await?;

        // Removals in the background: a worker may take its whole stop timeout.
        for (r, timeout, drain) in removals {
            report.removing.push(r.name.clone());
            self.remove_in_background(r, timeout, drain && report.proxy_reloaded);
        }

        // Networks of objects that are gone (once their containers are).
        for n in &networks {
            let object = n.labels.get(labels::OBJECT).cloned().unwrap_or_default();
            let stack = n.labels.get(labels::STACK).map(String::as_str);
            if !hold
                && !want_nets.contains_key(&n.name)
                && !protected.contains(&object)
                && !stack.is_some_and(|s| protected_stacks.contains(s))
            {
                if let Err(e) = self.engine.remove_network(&n.name).await {
                    debug!(network = %n.name, error = %e, "network not removed yet");
                }
            }
        }

        let proxy = containers
            .iter()
            .find(|c| c.name == proxy_name(&self.opts.instance))
            .map(|c| (Health::from_engine(&c.state, &c.status), c.image.clone()));
        self.write_statuses(&desired, &decisions, &errors, proxy, &mut report)?;
        for h in &self.hooks {
            h.after_pass(PassContext {
                engine: &self.engine,
                desired: &desired,
                state: &self.state,
                docs: &docs,
            })
            .await;
        }
        Ok(report)
    }

    fn remove_in_background(&self, r: Removal, timeout: i64, drain: bool) {
        if let Ok(mut s) = self.stopping.lock() {
            if !s.insert(r.name.clone()) {
                return;
            }
        }
        info!(container = %r.name, reason = ?r.reason, "removing replica");
        let engine = self.engine.clone();
        let stopping = self.stopping.clone();
        let wake = self.wake_tx.clone();
        tokio::spawn(async move {
            if drain {
                tokio::time::sleep(DRAIN).await;
            }
            if let Err(e) = engine.stop_and_remove(&r.name, timeout).await {
                warn!(container = %r.name, error = %e, "cannot remove");
            }
            if let Ok(mut s) = stopping.lock() {
                s.remove(&r.name);
            }
            let _ = wake.send(());
        });
    }

    /// Removes everything of this instance: containers (workers get their stop timeout),
    /// the proxy, networks, and with `volumes` the data volumes too.
    pub async fn down(&self, volumes: bool) -> Result<Vec<String>, HostError> {
        let mut removed = Vec::new();
        let containers = self.engine.containers().await?;
        let mut tasks = Vec::new();
        for c in containers {
            let engine = self.engine.clone();
            tasks.push(tokio::spawn(async move {
                engine.stop_and_remove(&c.name, 30).await.map(|()| c.name)
            }));
        }
        for t in tasks {
            if let Ok(r) = t.await {
                removed.push(r?);
            }
        }
        for n in self.engine.networks().await? {
            self.engine.remove_network(&n.name).await?;
            removed.push(format!("network {}", n.name));
        }
        if volumes {
            for (v, _) in self.engine.volumes().await? {
                self.engine.remove_volume(&v).await?;
                removed.push(format!("volume {v}"));
            }
        }
        clear_dir(&self.state.proxy_conf_dir(), &BTreeSet::new());
        for s in status::read_all(&self.state) {
            status::remove(&self.state, &s.kind, &s.name);
        }
        Ok(removed)
    }
}
