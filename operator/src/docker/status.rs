//! Status of each object on the host, in the same shape as `.status` on Kubernetes, written to
//! `<state>/status/<kind>-<name>.json` only when it changed, and read back by
//! `berth host status`.

use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::{Deserialize, Serialize};

use crate::api::appstack::{AppStackStatus, ComponentStatus, Phase};
use crate::api::WorkerStatus;

use super::desired::ObjectKey;
use super::state::{StateDir, StateError};

/// What a status file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub kind: String,
    pub name: String,
    pub status: serde_json::Value,
}

/// The summary of one object, before it becomes conditions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub components: Vec<ComponentStatus>,
    /// `(reason, message)` when the spec cannot be carried out.
    pub failed: Option<(String, String)>,
    /// A reason something that worked does not.
    pub degraded: Option<String>,
    /// Changes under way (or waiting), with a message.
    pub progressing: Option<String>,
    pub url: Option<String>,
    pub generation: Option<i64>,
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: last,
        observed_generation: generation,
    }
}

/// Phase and conditions from a summary; transition times carried over from `previous`.
pub fn conditions(s: &Summary, previous: &[Condition]) -> (Phase, Vec<Condition>) {
    let g = s.generation;
    if let Some((reason, message)) = &s.failed {
        return (
            Phase::Failed,
            vec![
                condition("Ready", false, reason, message, g, previous),
                condition("Progressing", false, reason, "", g, previous),
                condition("Degraded", false, "AsExpected", "", g, previous),
            ],
        );
    }
    let degraded = condition(
        "Degraded",
        s.degraded.is_some(),
        if s.degraded.is_some() {
            "ReplicaFailing"
        } else {
            "AsExpected"
        },
        s.degraded.as_deref().unwrap_or(""),
        g,
        previous,
    );
    let progressing = condition(
        "Progressing",
        s.progressing.is_some(),
        if s.progressing.is_some() {
            "RollingOut"
        } else {
            "Converged"
        },
        s.progressing.as_deref().unwrap_or(""),
        g,
        previous,
    );
    let all_ready = s
        .components
        .iter()
        .all(|c| c.ready_replicas >= c.desired_replicas);
    let ready_ok = all_ready && s.degraded.is_none() && s.progressing.is_none();
    let not_ready: Vec<String> = s
        .components
        .iter()
        .filter(|c| c.ready_replicas < c.desired_replicas)
        .map(|c| {
            format!(
                "{} {}/{} ready",
                c.name, c.ready_replicas, c.desired_replicas
            )
        })
        .collect();
    let ready = condition(
        "Ready",
        ready_ok,
        if ready_ok {
            "AllReplicasReady"
        } else {
            "NotReady"
        },
        &not_ready.join(", "),
        g,
        previous,
    );
    let phase = if s.degraded.is_some() {
        Phase::Degraded
    } else if ready_ok {
        Phase::Ready
    } else {
        Phase::Progressing
    };
    (phase, vec![ready, progressing, degraded])
}

/// The AppStack status.
pub fn appstack_status(s: &Summary, previous: Option<&AppStackStatus>) -> AppStackStatus {
    let prev = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let (phase, conditions) = conditions(s, prev);
    AppStackStatus {
        phase: Some(phase),
        url: s.url.clone(),
        components: s.components.clone(),
        conditions,
        observed_generation: s.generation,
    }
}

/// The Worker status.
pub fn worker_status(s: &Summary, name: &str, previous: Option<&WorkerStatus>) -> WorkerStatus {
    let prev = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let (_, conditions) = conditions(s, prev);
    let c = s.components.first();
    WorkerStatus {
        replicas: c.map(|c| c.ready_replicas).unwrap_or(0),
        desired_replicas: c.map(|c| c.desired_replicas),
        queue_depth: previous.and_then(|p| p.queue_depth),
        last_scale_time: previous.and_then(|p| p.last_scale_time.clone()),
        selector: Some(format!("berth.dev/worker={name}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn comp(ready: i32, desired: i32) -> ComponentStatus {
        ComponentStatus {
            name: "api".into(),
            kind: "api".into(),
            desired_replicas: desired,
            ready_replicas: ready,
            image: "a:1".into(),
            message: String::new(),
        }
    }

    #[test]
    fn phases() {
        let ready = Summary {
            components: vec![comp(2, 2)],
            ..Default::default()
        };
        assert_eq!(conditions(&ready, &[]).0, Phase::Ready);
        let progressing = Summary {
            components: vec![comp(1, 2)],
            progressing: Some("rolling out".into()),
            ..Default::default()
        };
        assert_eq!(conditions(&progressing, &[]).0, Phase::Progressing);
        let degraded = Summary {
            components: vec![comp(1, 1)],
            degraded: Some("new replica unhealthy".into()),
            ..Default::default()
        };
        let (phase, conds) = conditions(&degraded, &[]);
        assert_eq!(phase, Phase::Degraded);
        assert!(conds.iter().any(|c| c.type_ == "Degraded"
            && c.status == "True"
            && c.message == "new replica unhealthy"));
        let failed = Summary {
            failed: Some(("InvalidSpec".into(), "spec.api.image: required".into())),
            ..Default::default()
        };
        let (phase, conds) = conditions(&failed, &[]);
        assert_eq!(phase, Phase::Failed);
        assert_eq!(conds[0].reason, "InvalidSpec");
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let s = Summary {
            components: vec![comp(1, 1)],
            ..Default::default()
        };
        let (_, first) = conditions(&s, &[]);
        let (_, second) = conditions(&s, &first);
        assert_eq!(first, second);
    }
}
