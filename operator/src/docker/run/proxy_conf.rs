//! The proxy step of a pass: the nginx configuration of the replicas that serve, the proxy
//! container, and a graceful reload when the files changed.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use tracing::{debug, info};

use crate::plan::{ComponentKind, HealthCheckKind};

use super::super::converge::{Decision, Health};
use super::super::desired::DesiredHost;
use super::super::engine::ContainerInfo;
use super::super::labels;
use super::super::proxy::{self, ProxySpec, Site};
use super::{proxy_name, Host, HostError};

impl Host {
    /// Ensures the proxy container and its configuration; true when nginx was reloaded.
    pub(super) async fn proxy(
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
        let files =
            super::super::certs::render(&sites, &super::super::certs::cert_root(&self.state));
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
}

/// Removes the `.conf` files not in `keep`; true when one was removed.
pub(super) fn clear_dir(dir: &Path, keep: &BTreeSet<String>) -> bool {
    let mut changed = false;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".conf") && !keep.contains(&name) {
            changed |= std::fs::remove_file(e.path()).is_ok();
        }
    }
    changed
}
