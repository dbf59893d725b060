//! The status step of a pass: each object's summary from the decisions, stored as its status.

use std::collections::{HashMap, HashSet};

use crate::api::{AppStackStatus, WorkerStatus};

use super::super::converge::{Decision, Health};
use super::super::desired::{DesiredHost, Kind, ObjectKey};
use super::super::status::{self, Summary};
use super::{Host, HostError, PassReport};
use crate::status::Problem;

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
