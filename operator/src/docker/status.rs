//! Status of each object on the host, in the same shape as `.status` on Kubernetes and from the
//! same rules ([`crate::status`]), written to `<state>/status/<kind>-<name>.json` only when it
//! changed, and read back by `berth host status`.

use std::path::Path;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::appstack::{AppStackStatus, ComponentStatus};
use crate::api::WorkerStatus;
use crate::plan::names;
use crate::status::{Facts, Problem, QUEUE_REACHABLE};

use super::converge::Decision;
use super::desired::{DesiredGroup, ObjectKey};
use super::state::{StateDir, StateError};

/// What a status file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub kind: String,
    pub name: String,
    pub status: serde_json::Value,
}

/// What a pass observed of one object, before it becomes a status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub components: Vec<Facts>,
    /// Why the spec cannot be carried out.
    pub problem: Option<Problem>,
    pub url: Option<String>,
    pub generation: Option<i64>,
    /// A Worker with `scaling`: its `QueueReachable` condition (set by the autoscaler) stays.
    pub scaling: bool,
}

/// A replica group as the shared status rules see it, from the pass's decision (`error`: what
/// failed when it was carried out).
pub fn group_facts(g: &DesiredGroup, d: &Decision, error: Option<&str>) -> Facts {
    let failing = match (error, &d.degraded) {
        (Some(e), Some(m)) => Some(format!("{e}; {m}")),
        (Some(e), None) => Some(e.to_string()),
        (None, m) => m.clone(),
    };
    let message = error
        .map(str::to_string)
        .or(d.waiting.clone())
        .or(d.degraded.clone())
        .unwrap_or_default();
    Facts {
        status: ComponentStatus {
            name: g.component.name.clone(),
            kind: g.component.kind.as_str().into(),
            desired_replicas: g.replicas,
            ready_replicas: d.ready as i32,
            image: g.component.image.clone(),
            message,
        },
        rolling: d.progressing,
        failing,
    }
}

/// The proxy of a stack: ready, or starting.
pub fn proxy_facts(ready: bool, image: String) -> Facts {
    Facts {
        status: ComponentStatus {
            name: "proxy".into(),
            kind: "proxy".into(),
            desired_replicas: 1,
            ready_replicas: i32::from(ready),
            image,
            message: if ready {
                String::new()
            } else {
                "starting".into()
            },
        },
        rolling: !ready,
        failing: None,
    }
}

/// The AppStack status.
pub fn appstack_status(s: &Summary, previous: Option<&AppStackStatus>) -> AppStackStatus {
    crate::status::appstack(
        s.generation,
        previous,
        s.url.clone(),
        s.components.clone(),
        s.problem.as_ref(),
        Timestamp::now(),
    )
}

/// The Worker status; the autoscaler's fields (`queueDepth`, `lastScaleTime`,
/// `QueueReachable`) are carried over from `previous` (the autoscaler updates them).
pub fn worker_status(s: &Summary, name: &str, previous: Option<&WorkerStatus>) -> WorkerStatus {
    let prev = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let facts = s.components.first().cloned().unwrap_or_else(|| Facts {
        status: ComponentStatus {
            name: name.into(),
            kind: "worker".into(),
            ..Default::default()
        },
        rolling: false,
        failing: None,
    });
    let mut conditions = crate::status::worker_conditions(
        s.generation,
        prev,
        &facts,
        s.problem.as_ref(),
        None,
        Timestamp::now(),
    );
    if s.scaling {
        conditions.extend(crate::status::condition(prev, QUEUE_REACHABLE).cloned());
    }
    WorkerStatus {
        replicas: facts.status.ready_replicas,
        desired_replicas: Some(facts.status.desired_replicas),
        queue_depth: previous.and_then(|p| p.queue_depth),
        last_scale_time: previous.and_then(|p| p.last_scale_time.clone()),
        selector: Some(names::worker_selector(name)),
        conditions,
        observed_generation: s.generation,
    }
}

fn file(dir: &Path, key: &ObjectKey) -> std::path::PathBuf {
    dir.join(format!(
        "{}-{}.json",
        key.kind.as_str().to_lowercase(),
        key.name
    ))
}

/// Reads the stored status of an object.
pub fn read(state: &StateDir, key: &ObjectKey) -> Option<ObjectStatus> {
    let bytes = std::fs::read(file(&state.status_dir(), key)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes a status if it changed (ignoring transition times that were carried over).
pub fn write(
    state: &StateDir,
    key: &ObjectKey,
    status: serde_json::Value,
) -> Result<bool, StateError> {
    let doc = ObjectStatus {
        kind: key.kind.as_str().into(),
        name: key.name.clone(),
        status,
    };
    let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    state.write_if_changed(&file(&state.status_dir(), key), &bytes)
}

/// Removes the status of an object that is gone.
pub fn remove(state: &StateDir, kind: &str, name: &str) {
    let _ = std::fs::remove_file(
        state
            .status_dir()
            .join(format!("{}-{name}.json", kind.to_lowercase())),
    );
}

/// Every stored status, sorted by kind and name.
pub fn read_all(state: &StateDir) -> Vec<ObjectStatus> {
    let mut out: Vec<ObjectStatus> = std::fs::read_dir(state.status_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a: &ObjectStatus, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    out
}
