//! [`Host::run`]: passes on Docker events, manifest changes, finished removals and a slow
//! resync.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::manifest;

use super::super::labels;
use super::{Host, HostError, MANIFEST_CHECK, PROGRESS_RECHECK, RESYNC};

impl Host {
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
