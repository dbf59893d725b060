//! The status step of a pass: each object's summary from the decisions, stored as its status.

use std::collections::{HashMap, HashSet};

use crate::api::appstack::ComponentStatus;
use crate::api::{AppStackStatus, WorkerStatus};

use super::super::converge::{Decision, Health};
use super::super::desired::{DesiredHost, Kind, ObjectKey};
use super::super::status::{self, Summary};
use super::{Host, HostError, PassReport};

impl Host {
    pub(super) fn write_statuses(
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
                ..Default::default()
            };
            let mut progressing = Vec::new();
            let mut degraded = Vec::new();
            for g in &o.groups {
                let d = decisions.get(g.name()).cloned().unwrap_or_default();
                let mut message = d.waiting.clone().or(d.degraded.clone()).unwrap_or_default();
                if let Some(e) = errors.get(g.name()) {
                    message = e.clone();
                    degraded.push(format!("{}: {e}", g.component.name));
                }
                if let Some(m) = &d.degraded {
                    degraded.push(format!("{}: {m}", g.component.name));
                }
                if d.progressing {
                    progressing.push(format!(
                        "{}: {}",
                        g.component.name,
                        d.waiting.clone().unwrap_or_else(|| "rolling out".into())
                    ));
                }
                report.progressing |= d.progressing;
                s.components.push(ComponentStatus {
                    name: g.component.name.clone(),
                    kind: g.component.kind.as_str().into(),
                    desired_replicas: g.replicas,
                    ready_replicas: d.ready as i32,
                    image: g.component.image.clone(),
                    message,
                });
            }
            if o.exposure.is_some() {
                let ready = proxy.as_ref().is_some_and(|p| p.0 == Health::Ready);
                if !ready {
                    progressing.push("proxy: starting".into());
                    report.progressing = true;
                }
                s.components.push(ComponentStatus {
                    name: "proxy".into(),
                    kind: "proxy".into(),
                    desired_replicas: 1,
                    ready_replicas: i32::from(ready),
                    image: proxy
                        .as_ref()
                        .map(|p| p.1.clone())
                        .unwrap_or_else(|| self.opts.proxy_image.clone()),
                    message: if ready {
                        String::new()
                    } else {
                        "starting".into()
                    },
                });
            }
            s.degraded = (!degraded.is_empty()).then(|| degraded.join("; "));
            s.progressing = (!progressing.is_empty()).then(|| progressing.join("; "));
            if let Some(m) = desired.held.get(&o.key) {
                s.failed = Some(("InvalidManifest".into(), m.clone()));
            }
            self.store_status(&o.key, &s)?;
            keep.insert((o.key.kind.as_str().into(), o.key.name.clone()));
            report.summaries.insert(o.key.clone(), s);
        }
        for e in &desired.errors {
            let s = Summary {
                failed: Some((e.reason.clone(), e.message.clone())),
                generation: e.generation,
                ..Default::default()
            };
            self.store_status(&e.key, &s)?;
            keep.insert((e.key.kind.as_str().into(), e.key.name.clone()));
            report.summaries.insert(e.key.clone(), s);
        }
        super::super::manifests::write_statuses(&self.state, &self.opts.manifests, desired)?;
        for old in status::read_all(&self.state) {
            // Backup statuses belong to the backup hook (`docker::backups`), those of manifest
            // files to `docker::manifests`.
            if old.kind != super::super::backups::KIND
                && old.kind != super::super::manifests::KIND
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
}
