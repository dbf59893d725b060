//! Scheduled backups on a Docker host: a [`HostHook`](super::hook::HostHook) that, after
//! every pass, finds the host's Backups (standalone `Backup` manifests in the folder and the
//! `backup` child of each AppStack, named as on Kubernetes), asks
//! [`backup::host::Scheduler`](crate::backup::host::Scheduler) which are due (cron + time zone,
//! from an injected [`Clock`]) and runs each due one in a spawned task through
//! [`run_in_container`]: `pg_dump` by `docker exec` inside the stack's PostgreSQL container (its
//! port is never published), compressed, checksummed, verified and pruned by the shared engine.
//! At most one run per Backup at a time. The loop wakes at the next firing time
//! ([`HostHook::next_wake`]) and when a run ends; nothing polls.
//!
//! Destination `volume:` on a Docker host is the folder `<state-dir>/backups/<backup>`, also
//! made available as the named volume `<instance>-backup-<backup>` (a bind of that folder,
//! labelled with the instance), so `docker run -v <volume>:/backups ...` sees the files and
//! `berth backup list|restore --from <folder>` reads them. `berth host down --volumes` removes the
//! volume, not the folder: backups outlive the stack. `s3:` writes to
//! `s3://<bucket>/<prefix>` with credentials from berth's own environment.
//!
//! Status (`<state>/status/backup-<name>.json`, shown by `berth host status`) has the shape of
//! a Backup's `.status` on Kubernetes: lastScheduleTime, lastSuccessfulTime, lastBackup,
//! backups and a Ready condition (`BackupFailed` with the error when a run fails).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bollard::models::VolumeCreateRequest;
use chrono::{DateTime, Timelike, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::backup_exec::{run_in_container, HostJob};
use crate::api::{Backup, BackupSpec, BackupStatus};
use crate::backup::host::{self, Clock, Scheduler};
use crate::backup::report::status_from_jobs;
use crate::backup::BackupError;
use crate::manifest::{self, Document, LoadError, Object};
use crate::plan::{set::ManifestSet, stack::plan_stack, ComponentKind};

use super::desired::{DesiredHost, Kind};
use super::hook::{HostHook, PassContext};
use super::labels;
use super::state::StateDir;
use super::status::{self, ObjectStatus};

/// The kind name of Backup status files.
pub const KIND: &str = "Backup";

/// The folder of a Backup's `volume:` destination.
pub fn backup_folder(state: &StateDir, backup: &str) -> PathBuf {
    state.root.join("backups").join(backup)
}

/// The named volume binding that folder.
pub fn volume_name(instance: &str, backup: &str) -> String {
    format!("{instance}-backup-{backup}")
}

/// The Backups of some manifests: standalone ones and AppStack children (`<stack>`), by name.
/// A standalone Backup with the name of a stack's child is ignored (with a warning).
pub fn host_backups(docs: &[Document]) -> BTreeMap<String, Backup> {
    let set = ManifestSet::from_documents(docs);
    let mut out = BTreeMap::new();
    for stack in &set.stacks {
        if let Ok(p) = plan_stack(stack, &set.observed_for(stack)) {
            if let Some((name, spec)) = p.children.backup {
                out.insert(name.clone(), Backup::new(&name, spec));
            }
        }
    }
    for d in docs {
        if let Ok(Object::Backup(b)) = &d.result {
            let Some(name) = b.metadata.name.clone() else {
                continue;
            };
            if out.contains_key(&name) {
                warn!(backup = %name, "a stack's backup has this name; the Backup manifest is ignored");
                continue;
            }
            out.insert(name, (**b).clone());
        }
    }
    out
}

/// The stored status of Backup `name`.
pub fn read_status(state: &StateDir, name: &str) -> Option<BackupStatus> {
    let bytes = std::fs::read(status_file(state, name)).ok()?;
    let doc: ObjectStatus = serde_json::from_slice(&bytes).ok()?;
    serde_json::from_value(doc.status).ok()
}

fn status_file(state: &StateDir, name: &str) -> PathBuf {
    state.status_dir().join(format!("backup-{name}.json"))
}

fn write_status(state: &StateDir, name: &str, s: &BackupStatus) {
    let doc = ObjectStatus {
        kind: KIND.into(),
        name: name.into(),
        status: serde_json::to_value(s).unwrap_or_default(),
    };
    let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    if let Err(e) = state.write_if_changed(&status_file(state, name), &bytes) {
        warn!(backup = %name, error = %e, "cannot write the status");
    }
}

/// The replica group of `stack`'s PostgreSQL on this host.
fn postgres_group(desired: &DesiredHost, stack: &str) -> Option<String> {
    desired
        .groups()
        .find(|g| {
            g.object.kind == Kind::AppStack
                && g.object.name == stack
                && g.component.kind == ComponentKind::Postgres
        })
        .map(|g| g.name().to_string())
}

#[derive(Default)]
struct Inner {
    scheduler: Scheduler,
    /// The specs seen at the last pass (for `next_wake`).
    specs: BTreeMap<String, BackupSpec>,
    seen: HashSet<String>,
    running: HashSet<String>,
    volumes: HashSet<String>,
    /// Runs finished since start.
    finished: u64,
}

/// The Backup scheduler of a Docker host.
#[derive(Clone)]
pub struct BackupHook {
    manifests: PathBuf,
    instance: String,
    clock: Arc<dyn Clock>,
    wake: Option<mpsc::UnboundedSender<()>>,
    inner: Arc<Mutex<Inner>>,
}

impl BackupHook {
    /// Backups of the manifests in `manifests`, on the host instance `instance`, timed by `clock`;
    /// `wake` (see [`Host::waker`](super::run::Host::waker)) is told when a run ends.
    pub fn new(
        manifests: &Path,
        instance: &str,
        clock: Arc<dyn Clock>,
        wake: Option<mpsc::UnboundedSender<()>>,
    ) -> BackupHook {
        BackupHook {
            manifests: manifests.to_path_buf(),
            instance: instance.to_string(),
            clock,
            wake,
            inner: Arc::default(),
        }
    }

    /// How many runs have ended (successfully or not).
    pub fn finished_runs(&self) -> u64 {
        self.inner.lock().map(|i| i.finished).unwrap_or(0)
    }

    /// The Backups running now.
    pub fn running(&self) -> Vec<String> {
        self.inner
            .lock()
            .map(|i| i.running.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn load(&self) -> Option<Vec<Document>> {
        match manifest::load_paths(std::slice::from_ref(&self.manifests)) {
            Ok(d) => Some(d),
            Err(LoadError::EmptyDir { .. }) => Some(Vec::new()),
            Err(e) => {
                warn!(error = %e, "backups: cannot read the manifests");
                None
            }
        }
    }

    async fn pass(&self, ctx: PassContext<'_>) {
        // The documents in force (a broken file's last good version included); a hook driven
        // on its own, without the host's loop, reads the folder.
        let loaded;
        let docs = if ctx.docs.is_empty() {
            let Some(d) = self.load() else { return };
            loaded = d;
            &loaded[..]
        } else {
            ctx.docs
        };
        let backups = host_backups(docs);
        // Statuses of Backups that are gone.
        for old in status::read_all(ctx.state) {
            if old.kind == KIND && !backups.contains_key(&old.name) {
                status::remove(ctx.state, KIND, &old.name);
            }
        }
        let now = self.clock.now();
        let due = {
            let Ok(mut inner) = self.inner.lock() else {
                return;
            };
            inner.seen.retain(|n| backups.contains_key(n));
            for (name, b) in &backups {
                if inner.seen.insert(name.clone()) {
                    let previous = read_status(ctx.state, name);
                    match previous
                        .as_ref()
                        .and_then(|s| s.last_schedule_time.as_ref())
                    {
                        Some(t) => {
                            if let Ok(t) = t.0.to_string().parse::<DateTime<Utc>>() {
                                inner.scheduler.resume(name, t);
                            }
                        }
                        None => {
                            // Listed by `berth host status` before its first run.
                            let s = status_from_jobs(b, &[], previous.as_ref(), now);
                            write_status(ctx.state, name, &s);
                        }
                    }
                }
            }
            let specs: BTreeMap<String, BackupSpec> = backups
                .iter()
                .map(|(n, b)| (n.clone(), b.spec.clone()))
                .collect();
            let due = inner.scheduler.due(now, &specs);
            inner.specs = specs;
            for d in &due {
                inner.running.insert(d.name.clone());
            }
            due
        };
        for mut d in due {
            // Firing times are whole minutes (the cron library carries `now`'s sub-seconds over).
            d.scheduled_for = d
                .scheduled_for
                .with_nanosecond(0)
                .unwrap_or(d.scheduled_for);
            let Some(backup) = backups.get(&d.name).cloned() else {
                continue;
            };
            let job = self.job(&ctx, &backup).await;
            let docker = ctx.engine.docker.clone();
            let state = ctx.state.clone();
            let this = self.clone();
            info!(backup = %d.name, scheduled_for = %d.scheduled_for, "backup due");
            tokio::spawn(async move {
                let result = match job {
                    Ok(job) => run_in_container(&docker, &job).await,
                    Err(e) => Err(e),
                };
                match &result {
                    Ok(out) => info!(backup = %d.name, file = %out.backup.name, "backup done"),
                    Err(e) => warn!(backup = %d.name, error = %e, "backup failed"),
                }
                let finished_at = this.clock.now();
                let previous = read_status(&state, &d.name);
                let s = host::record(
                    &backup,
                    previous.as_ref(),
                    d.scheduled_for,
                    finished_at,
                    &result,
                );
                write_status(&state, &d.name, &s);
                if let Ok(mut inner) = this.inner.lock() {
                    inner.scheduler.finished(&d.name, finished_at);
                    inner.running.remove(&d.name);
                    inner.finished += 1;
                }
                if let Some(w) = &this.wake {
                    let _ = w.send(());
                }
            });
        }
    }

    /// The run of `backup` on this host: its stack's PostgreSQL container and its destination.
    async fn job(&self, ctx: &PassContext<'_>, backup: &Backup) -> Result<HostJob, BackupError> {
        let name = backup.metadata.name.clone().unwrap_or_default();
        let spec = &backup.spec;
        let Some(stack) = spec.database.app_stack_ref.as_deref() else {
            return Err(BackupError::Other(
                "on a Docker host a Backup dumps an AppStack's PostgreSQL: set \
                 database.appStackRef (urlSecretRef needs Kubernetes, or `berth backup run`)"
                    .into(),
            ));
        };
        let group = postgres_group(ctx.desired, stack).ok_or_else(|| {
            BackupError::Other(format!(
                "AppStack {stack} with a postgres component is not on this host \
                 (add it to the manifests, or fix database.appStackRef)"
            ))
        })?;
        // Its container (a running one first); the runner says so when it is not running.
        let mut replicas: Vec<_> = ctx
            .engine
            .containers()
            .await
            .map_err(|e| BackupError::Docker(e.to_string()))?
            .into_iter()
            .filter(|c| c.label(labels::GROUP) == Some(group.as_str()))
            .collect();
        replicas.sort_by_key(|c| (c.state != "running", c.name.clone()));
        let container = replicas.first().map(|c| c.name.clone()).ok_or_else(|| {
            BackupError::Other(format!(
                "the PostgreSQL of AppStack {stack} has no container yet (it is being created)"
            ))
        })?;
        let destination = match (&spec.destination.volume, &spec.destination.s3) {
            (_, Some(s3)) => format!("s3://{}/{}", s3.bucket, s3.prefix.trim_start_matches('/')),
            _ => {
                let folder = backup_folder(ctx.state, &name);
                std::fs::create_dir_all(&folder).map_err(|e| {
                    BackupError::Other(format!("cannot create {}: {e}", folder.display()))
                })?;
                self.ensure_volume(ctx, &name, &folder).await;
                folder.display().to_string()
            }
        };
        HostJob::from_spec(&name, spec, container, destination)
    }

    /// The named volume binding the backup folder (best effort: the folder is what counts).
    async fn ensure_volume(&self, ctx: &PassContext<'_>, backup: &str, folder: &Path) {
        let volume = volume_name(&self.instance, backup);
        if self
            .inner
            .lock()
            .map(|i| i.volumes.contains(&volume))
            .unwrap_or(false)
        {
            return;
        }
        let request = VolumeCreateRequest {
            name: Some(volume.clone()),
            driver: Some("local".into()),
            driver_opts: Some(HashMap::from([
                ("type".to_string(), "none".to_string()),
                ("o".to_string(), "bind".to_string()),
                ("device".to_string(), folder.display().to_string()),
            ])),
            labels: Some(HashMap::from([
                (labels::INSTANCE.to_string(), self.instance.clone()),
                (labels::OBJECT.to_string(), format!("backup/{backup}")),
            ])),
            ..VolumeCreateRequest::default()
        };
        match ctx.engine.docker.create_volume(request).await {
            Ok(_) => {
                if let Ok(mut i) = self.inner.lock() {
                    i.volumes.insert(volume);
                }
            }
            Err(e) => warn!(volume = %volume, error = %e, "cannot create the backup volume"),
        }
    }
}

impl HostHook for BackupHook {
    fn after_pass<'a>(&'a self, ctx: PassContext<'a>) -> BoxFuture<'a, ()> {
        self.pass(ctx).boxed()
    }

    /// The next firing time of a Backup that is not running (a running one is looked at again
    /// when it ends: the run wakes the loop).
    fn next_wake(&self) -> Option<Instant> {
        let inner = self.inner.lock().ok()?;
        let idle: BTreeMap<String, BackupSpec> = inner
            .specs
            .iter()
            .filter(|(n, _)| !inner.running.contains(*n))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        let now = self.clock.now();
        let at = inner.scheduler.next_wakeup(now, &idle)?;
        let wait = (at - now).to_std().unwrap_or_default();
        Some(Instant::now() + wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = "apiVersion: berth.dev/v1alpha1
kind: AppStack
metadata: {name: shop}
spec:
  api: {image: a:1, port: 8080}
  postgres: {}
  backup: {schedule: \"0 2 * * *\", timeZone: Europe/Berlin, retention: {keepLast: 7}}
---
apiVersion: berth.dev/v1alpha1
kind: Backup
metadata: {name: shop}
spec:
  schedule: \"0 5 * * *\"
  database: {appStackRef: shop}
  destination: {volume: {size: 1Gi}}
  retention: {keepLast: 1}
---
apiVersion: berth.dev/v1alpha1
kind: Backup
metadata: {name: hourly}
spec:
  schedule: \"0 * * * *\"
  database: {appStackRef: shop}
  destination: {volume: {size: 1Gi}}
  retention: {keepLast: 24}
";

    #[test]
    fn stack_children_and_standalone_backups() {
        let docs = manifest::parse_documents(Path::new("m.yaml"), DOCS);
        let b = host_backups(&docs);
        assert_eq!(b.keys().collect::<Vec<_>>(), ["hourly", "shop"]);
        // The stack's child wins over a Backup manifest of the same name.
        assert_eq!(b["shop"].spec.schedule, "0 2 * * *");
        assert_eq!(b["shop"].spec.time_zone, "Europe/Berlin");
        assert_eq!(
            b["shop"].spec.database.app_stack_ref.as_deref(),
            Some("shop")
        );
        assert!(b["shop"].spec.destination.volume.is_some());
        assert_eq!(b["hourly"].spec.retention.keep_last, Some(24));
    }

    #[test]
    fn folder_and_volume_names() {
        let state = StateDir {
            root: PathBuf::from("/var/lib/berth"),
        };
        assert_eq!(
            backup_folder(&state, "shop"),
            PathBuf::from("/var/lib/berth/backups/shop")
        );
        assert_eq!(volume_name("berth", "shop"), "berth-backup-shop");
    }
}
