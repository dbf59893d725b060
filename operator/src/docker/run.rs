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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::api::{AppStackStatus, WorkerSpec, WorkerStatus};
use crate::manifest::{self, Document, LoadError};
use crate::plan::{ComponentKind, HealthCheckKind};

use super::converge::{decide, Decision, GroupSpec, Health, Removal, RemoveReason, Replica};
use super::desired::{self, desired_host, DesiredHost, Kind, ObjectKey};
use super::engine::{ContainerInfo, Engine, EngineError};
pub use super::hook::{HostHook, PassContext};
use super::labels;
use super::manifests::Manifests;
use super::probe::{self, Prober, Target};
use super::proxy::{self, ProxySpec, Site};
use super::state::{StateDir, StateError};
use super::status::{self, Summary};
use crate::status::Problem;

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
            prober: Prober::new(wake_tx.clone()),
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
        // A replica that lost one of its networks (it was removed and recreated) is replaced:
        // reconnecting it would leave its open connections hanging on the old network.
        let group_networks: HashMap<&str, Vec<&str>> = desired
            .groups()
            .map(|g| (g.name(), g.networks.iter().map(|n| n.0.as_str()).collect()))
            .collect();
        // Berth's own health checks of running replicas (HTTP and TCP).
        let mut targets = Vec::new();
        let mut probed_groups: HashSet<&str> = HashSet::new();
        for g in desired.groups() {
            let Some(h) = g.component.health.as_ref() else {
                continue;
            };
            if !probe::probed_by_berth(&h.check) {
                continue;
            }
            probed_groups.insert(g.name());
            for c in by_group.get(g.name()).into_iter().flatten() {
                let ip = g
                    .networks
                    .iter()
                    .find_map(|(n, _)| c.ips.get(n))
                    .or_else(|| c.ips.values().next());
                if let (true, Some(ip)) = (c.state == "running", ip) {
                    targets.push(Target {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        ip: ip.clone(),
                        check: h.check.clone(),
                        timing: h.clone(),
                    });
                }
            }
        }
        let probed = self.prober.sync(targets).await;
        let replicas_of = |group: &str| -> Vec<Replica> {
            let nets = group_networks.get(group).cloned().unwrap_or_default();
            by_group
                .get(group)
                .into_iter()
                .flatten()
                .map(|c| {
                    let mut health = Health::from_engine(&c.state, &c.status);
                    if probed_groups.contains(group) && health != Health::Stopped {
                        health = probed.get(&c.id).copied().unwrap_or(Health::Starting);
                    }
                    if health != Health::Stopped
                        && nets
                            .iter()
                            .any(|n| !c.networks.iter().any(|have| have == n))
                    {
                        info!(container = %c.name, "lost a network; replacing it");
                        health = Health::Stopped;
                    }
                    Replica {
                        name: c.name.clone(),
                        replica: c
                            .label(labels::REPLICA)
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0),
                        hash: c.label(labels::SPEC_HASH).unwrap_or_default().to_string(),
                        health,
                        image: c.image.clone(),
                    }
                })
                .collect()
        };
        let healthy: HashSet<String> = desired
            .groups()
            .filter(|g| {
                replicas_of(g.name())
                    .iter()
                    .any(|r| r.health == Health::Ready)
            })
            .map(|g| g.name().to_string())
            .collect();

        let mut decisions: HashMap<String, Decision> = HashMap::new();
        let mut errors: HashMap<String, String> = HashMap::new();
        let mut removals: Vec<(Removal, i64, bool)> = Vec::new();
        for g in desired.groups() {
            let blocked: Vec<String> = g
                .waits_for
                .iter()
                .filter(|w| !healthy.contains(*w))
                .cloned()
                .collect();
            let observed = replicas_of(g.name());
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
                match self
                    .engine
                    .run_container(&name, body, &g.networks[1..])
                    .await
                {
                    Ok(()) => report.created.push(name),
                    Err(e) => {
                        warn!(container = %name, error = %e, "cannot create replica");
                        // A half-made container is removed on the next pass (it never started).
                        errors.insert(g.name().to_string(), e.to_string());
                    }
                }
            }
            let drain = g.component.kind == ComponentKind::Api;
            for r in &d.remove {
                removals.push((r.clone(), g.stop_timeout(), drain));
            }
            decisions.insert(g.name().to_string(), d);
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

    /// Ensures the proxy container and its configuration; true when nginx was reloaded.
    async fn proxy(
        &self,
        desired: &DesiredHost,
        decisions: &HashMap<String, Decision>,
        containers: &[ContainerInfo],
    ) -> Result<bool, HostError> {
        let name = proxy_name(&self.opts.instance);
        let mut sites = Vec::new();
        for o in &desired.objects {
            let Some((exposure, _)) = &o.exposure else {
                continue;
            };
            let api = o
                .groups
                .iter()
                .find(|g| g.component.kind == ComponentKind::Api);
            let servers = api
                .and_then(|g| decisions.get(g.name()))
                .map(|d| d.serving.clone())
                .unwrap_or_default();
            let health_path =
                api.and_then(|g| match g.component.health.as_ref().map(|h| &h.check) {
                    Some(HealthCheckKind::Http { path, .. }) => Some(path.clone()),
                    _ => None,
                });
            sites.push(Site {
                stack: &o.key.name,
                exposure,
                servers,
                health_path,
            });
        }
        let edge: Vec<String> = desired
            .objects
            .iter()
            .filter_map(|o| o.exposure.as_ref().map(|(_, n)| n.clone()))
            .collect();
        let current = containers.iter().find(|c| c.name == name);
        let conf_dir = self.state.proxy_conf_dir();
        if sites.is_empty() {
            if current.is_some() && desired.hold.is_none() {
                self.engine.stop_and_remove(&name, 10).await?;
            }
            clear_dir(&conf_dir, &BTreeSet::new());
            return Ok(false);
        }
        // Configuration files first: a new proxy starts with them.
        // HTTPS for the sites whose certificate is stored (docker/certs.rs).
        let files = super::certs::render(&sites, &super::certs::cert_root(&self.state));
        let mut changed = false;
        for (file, text) in &files {
            changed |= self
                .state
                .write_if_changed(&conf_dir.join(file), text.as_bytes())?;
        }
        changed |= clear_dir(&conf_dir, &files.keys().cloned().collect());

        let spec = ProxySpec {
            name: name.clone(),
            image: self.opts.proxy_image.clone(),
            http: self.opts.http.clone(),
            https: self.opts.https.clone(),
            conf_dir: conf_dir.to_string_lossy().into_owned(),
        };
        let fresh = match current {
            Some(c)
                if c.label(labels::SPEC_HASH) == Some(spec.hash().as_str())
                    && Health::from_engine(&c.state, &c.status) != Health::Stopped =>
            {
                false
            }
            Some(_) => {
                info!(container = %name, "recreating the proxy");
                self.engine.stop_and_remove(&name, 10).await?;
                true
            }
            None => true,
        };
        use std::sync::atomic::Ordering::SeqCst;
        if changed {
            self.proxy_dirty.store(true, SeqCst);
        }
        if fresh {
            self.proxy_dirty.store(false, SeqCst);
            info!(container = %name, image = %spec.image, "starting the proxy");
            let body =
                proxy::container_body(&spec, &self.opts.instance, edge.first().map(String::as_str));
            let rest: Vec<(String, Vec<String>)> =
                edge.iter().skip(1).map(|n| (n.clone(), vec![])).collect();
            self.engine.run_container(&name, body, &rest).await?;
            return Ok(false);
        }
        let attached: &[String] = current.map(|c| c.networks.as_slice()).unwrap_or(&[]);
        for n in &edge {
            if !attached.contains(n) {
                self.engine.connect(&name, n, &[]).await?;
                self.proxy_dirty.store(true, SeqCst);
            }
        }
        for n in attached {
            if n.ends_with("-edge") && !edge.contains(n) {
                let _ = self.engine.disconnect(&name, n).await;
            }
        }
        let running = current.is_some_and(|c| c.state == "running");
        if !self.proxy_dirty.load(SeqCst) || !running {
            // A restarting nginx reads the files when it starts.
            return Ok(false);
        }
        let (code, out) = self
            .engine
            .exec(&name, &["sh", "-c", "nginx -t -q && nginx -s reload"])
            .await?;
        if code != 0 {
            return Err(HostError::ProxyConfig(out.trim().to_string()));
        }
        self.proxy_dirty.store(false, SeqCst);
        debug!("proxy reloaded");
        Ok(true)
    }

    fn write_statuses(
        &self,
        desired: &DesiredHost,
        decisions: &HashMap<String, Decision>,
        errors: &HashMap<String, String>,
        proxy: Option<(Health, String)>,
        report: &mut PassReport,
    ) -> Result<(), HostError> {
        let mut keep: HashSet<(String, String)> = HashSet::new();
        for o in &desired.objects {
            let mut s = Summary {
                url: o.url.clone(),
                generation: o.generation,
                scaling: o.worker.as_ref().is_some_and(|w| w.scaling.is_some()),
                ..Default::default()
            };
            for g in &o.groups {
                let d = decisions.get(g.name()).cloned().unwrap_or_default();
                report.progressing |= d.progressing;
                let error = errors.get(g.name()).map(String::as_str);
                s.components.push(status::group_facts(g, &d, error));
            }
            if o.exposure.is_some() {
                let ready = proxy.as_ref().is_some_and(|p| p.0 == Health::Ready);
                report.progressing |= !ready;
                let image = proxy
                    .as_ref()
                    .map(|p| p.1.clone())
                    .unwrap_or_else(|| self.opts.proxy_image.clone());
                s.components.push(status::proxy_facts(ready, image));
            }
            if let Some(m) = desired.held.get(&o.key) {
                s.problem = Some(Problem::new("InvalidManifest", m.clone()));
            }
            self.store_status(&o.key, &s)?;
            keep.insert((o.key.kind.as_str().into(), o.key.name.clone()));
            report.summaries.insert(o.key.clone(), s);
        }
        for e in &desired.errors {
            let s = Summary {
                problem: Some(Problem::new(e.reason.clone(), e.message.clone())),
                generation: e.generation,
                ..Default::default()
            };
            self.store_status(&e.key, &s)?;
            keep.insert((e.key.kind.as_str().into(), e.key.name.clone()));
            report.summaries.insert(e.key.clone(), s);
        }
        super::manifests::write_statuses(&self.state, &self.opts.manifests, desired)?;
        for old in status::read_all(&self.state) {
            // Backup statuses belong to the backup hook (`docker::backups`), those of manifest
            // files to `docker::manifests`.
            if old.kind != super::backups::KIND
                && old.kind != super::manifests::KIND
                && !keep.contains(&(old.kind.clone(), old.name.clone()))
            {
                status::remove(&self.state, &old.kind, &old.name);
            }
        }
        Ok(())
    }

    fn store_status(&self, key: &ObjectKey, s: &Summary) -> Result<(), HostError> {
        let previous = status::read(&self.state, key);
        let value = match key.kind {
            Kind::AppStack => {
                let prev: Option<AppStackStatus> =
                    previous.and_then(|p| serde_json::from_value(p.status).ok());
                serde_json::to_value(status::appstack_status(s, prev.as_ref()))
            }
            Kind::Worker => {
                let prev: Option<WorkerStatus> =
                    previous.and_then(|p| serde_json::from_value(p.status).ok());
                serde_json::to_value(status::worker_status(s, &key.name, prev.as_ref()))
            }
        }
        .unwrap_or_default();
        status::write(&self.state, key, value)?;
        Ok(())
    }

    /// Reconciles until `shutdown` completes. The stacks keep running after berth stops.
    pub async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), HostError> {
        let mut wake_rx = self
            .wake_rx
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1);
        let watchers = [self.spawn_event_watch(), self.spawn_manifest_watch()];
        tokio::pin!(shutdown);
        loop {
            let progressing = match self.pass().await {
                Ok(r) => {
                    if !r.is_noop() {
                        info!(
                            created = r.created.len(),
                            removing = r.removing.len(),
                            reloaded = r.proxy_reloaded,
                            "pass done"
                        );
                    }
                    r.progressing || !r.removing.is_empty()
                }
                Err(e) => {
                    warn!(error = %e, "pass failed; retrying");
                    true
                }
            };
            let mut wait = if progressing {
                PROGRESS_RECHECK
            } else {
                RESYNC
            };
            let now = Instant::now();
            for h in &self.hooks {
                if let Some(at) = h.next_wake() {
                    wait = wait.min(at.saturating_duration_since(now));
                }
            }
            tokio::select! {
                _ = &mut shutdown => {
                    info!("shutting down; the stacks keep running");
                    for w in watchers {
                        w.abort();
                    }
                    self.wake_rx = Some(wake_rx);
                    return Ok(());
                }
                _ = wake_rx.recv() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            // Events come in bursts: let the burst finish, then one pass for all of it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while wake_rx.try_recv().is_ok() {}
        }
    }

    fn spawn_event_watch(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.engine.clone();
        let wake = self.wake_tx.clone();
        let instance = self.opts.instance.clone();
        tokio::spawn(async move {
            loop {
                let mut events = Box::pin(engine.events());
                while let Some(ev) = events.next().await {
                    let Ok(ev) = ev else { break };
                    let action = ev.action.clone().unwrap_or_default();
                    let attrs = ev.actor.and_then(|a| a.attributes).unwrap_or_default();
                    let ours = attrs.get(labels::INSTANCE) == Some(&instance);
                    let relevant = match ev.typ.map(|t| t.to_string()).as_deref() {
                        Some("container") => {
                            ours && (matches!(
                                action.as_str(),
                                "start"
                                    | "die"
                                    | "destroy"
                                    | "stop"
                                    | "kill"
                                    | "oom"
                                    | "pause"
                                    | "unpause"
                            ) || action.starts_with("health_status"))
                        }
                        Some("network") => matches!(action.as_str(), "destroy" | "disconnect"),
                        _ => false,
                    };
                    if relevant {
                        debug!(%action, "docker event");
                        if wake.send(()).is_err() {
                            return;
                        }
                    }
                }
                // The engine restarted or the stream broke: reconnect, and resync meanwhile.
                let _ = wake.send(());
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    }

    fn spawn_manifest_watch(&self) -> tokio::task::JoinHandle<()> {
        let dir = self.opts.manifests.clone();
        let wake = self.wake_tx.clone();
        tokio::spawn(async move {
            let mut last = fingerprint(&dir);
            loop {
                tokio::time::sleep(MANIFEST_CHECK).await;
                let now = fingerprint(&dir);
                if now != last {
                    last = now;
                    info!("manifests changed");
                    if wake.send(()).is_err() {
                        return;
                    }
                }
            }
        })
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

/// Removes the `.conf` files not in `keep`; true when one was removed.
fn clear_dir(dir: &Path, keep: &BTreeSet<String>) -> bool {
    let mut changed = false;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".conf") && !keep.contains(&name) {
            changed |= std::fs::remove_file(e.path()).is_ok();
        }
    }
    changed
}

/// The manifest files with their sizes and modification times.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    manifest::yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).ok();
            let len = m.as_ref().map(|m| m.len()).unwrap_or(0);
            let mtime = m.and_then(|m| m.modified().ok());
            (f, len, mtime)
        })
        .collect()
}
