//! The status of every AppStack and Worker, on both backends, from observed facts: one set of
//! rules and one vocabulary, so the same situation reads the same in `kubectl get` and in
//! `berth host status`. Pure: the backends observe (Deployments and Worker objects on
//! Kubernetes, containers on a Docker host) and hand over [`Facts`]; this module decides.
//!
//! The rules, first match wins:
//! - a problem a person must fix (invalid spec, missing Secret, failed apply) → phase `Failed`,
//!   `Ready=False` with the problem's reason, `Progressing`/`Degraded` `False` (`Blocked`);
//! - a component failing (a new version that does not become healthy, a replica that stopped,
//!   a rollout past its deadline) → `Degraded` (`ReplicasFailing`);
//! - every component ready and none rolling out → `Ready` (`AllReplicasReady`);
//! - a component not ready, none rolling out, while the object was Ready (or Degraded) for this
//!   same generation → `Degraded` (something that worked stopped working);
//! - otherwise → `Progressing` (`RollingOut`: a rollout, a first start or a scale-up);
//!   `Progressing=True` whenever the phase is `Progressing`.
//!
//! [`conditions`] is the one place that keeps `lastTransitionTime`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::appstack::{AppStackStatus, ComponentStatus, Phase};

#[cfg(test)]
mod tests;

/// Condition types.
pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Worker only: whether the autoscaler can read the queue.
pub const QUEUE_REACHABLE: &str = "QueueReachable";

/// The reasons of the conditions this module sets (a [`Problem`] brings its own).
pub mod reason {
    /// Ready=True: every replica of every component is ready.
    pub const ALL_READY: &str = "AllReplicasReady";
    /// Ready=False: some replicas are not ready (the message lists them).
    pub const NOT_READY: &str = "ReplicasNotReady";
    /// Progressing=True: a rollout, first start or scale-up is under way.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Progressing=False: nothing is being rolled out.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// Degraded=True: something that worked has stopped working.
    pub const FAILING: &str = "ReplicasFailing";
    /// Degraded=False.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Progressing and Degraded while a problem must be fixed first.
    pub const BLOCKED: &str = "Blocked";
    /// QueueReachable=True.
    pub const QUEUE_READ: &str = "QueueRead";
}

/// Something a person must act on; reason is CamelCase, message says what to do and never
/// holds a secret value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
    pub message: String,
}

impl Problem {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// One component as a backend observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Name, kind, desired and ready replicas, image, and a note on what it waits for.
    pub status: ComponentStatus,
    /// A change is under way: a new version not on every replica yet, replicas being added or
    /// started, old ones being removed.
    pub rolling: bool,
    /// Something that should work does not (a new version that does not become healthy, a
    /// replica that stopped, a rollout past its deadline).
    pub failing: Option<String>,
}

impl Facts {
    fn ready(&self) -> bool {
        !self.rolling
            && self.failing.is_none()
            && self.status.ready_replicas >= self.status.desired_replicas
    }

    fn line(&self) -> String {
        let s = &self.status;
        let mut m = format!(
            "{} {}/{} ready",
            s.name, s.ready_replicas, s.desired_replicas
        );
        if !s.message.is_empty() {
            m.push_str(&format!(" ({})", s.message));
        }
        m
    }
}

/// One condition as wanted now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn new(type_: &'static str, ok: bool, reason: &str, message: impl Into<String>) -> Cond {
        Cond {
            type_,
            ok,
            reason: reason.into(),
            // The API server limits messages to 32768 bytes.
            message: message.into().chars().take(4000).collect(),
        }
    }
}

/// The rule every kind keeps `lastTransitionTime` by: the time of the old condition of this
/// type when its status is unchanged (so an unchanged status is equal and not written again),
/// else none (the caller's now).
pub fn kept_since(old: &[Condition], type_: &str, status: &str) -> Option<Time> {
    old.iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
}

/// One condition (status True, False or Unknown), its `lastTransitionTime` kept from `old` by
/// [`kept_since`], else `now`.
pub fn condition_since(
    old: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: kept_since(old, type_, status).unwrap_or(now),
        observed_generation: generation,
    }
}

/// Conditions from wanted ones, keeping `lastTransitionTime` where the status did not flip.
pub fn conditions(
    old: &[Condition],
    wanted: &[Cond],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = if w.ok { "True" } else { "False" };
            let since = kept_since(old, w.type_, status).unwrap_or(Time(now));
            // A queue that stays unreadable for the same reason keeps the message of the first
            // failed read: the error text of each poll varies ("timed out", "failed to lookup
            // address"...), and writing each variant would turn an outage into a stream of
            // status writes and reconciles (1,000 Workers: thousands of writes a minute).
            let message = old
                .iter()
                .find(|c| {
                    w.type_ == QUEUE_REACHABLE
                        && !w.ok
                        && c.type_ == w.type_
                        && c.status == status
                        && c.reason == w.reason
                })
                .map_or_else(|| w.message.clone(), |c| c.message.clone());
            Condition {
                type_: w.type_.into(),
                status: status.into(),
                reason: w.reason.clone(),
                message,
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

/// Puts `wanted` in place of the condition of its type (keeping its transition time when the
/// status did not flip).
pub fn set_condition(
    list: &mut Vec<Condition>,
    wanted: Cond,
    generation: Option<i64>,
    now: Timestamp,
) {
    let new = conditions(list, std::slice::from_ref(&wanted), generation, now);
    list.retain(|c| c.type_ != wanted.type_);
    list.extend(new);
}

/// Whether the object was Ready (or Degraded) for `generation`: a replica lost now is
/// degradation, not progress.
pub fn was_up(old: &[Condition], generation: Option<i64>) -> bool {
    old.iter().any(|c| {
        (c.type_ == READY || c.type_ == DEGRADED)
            && c.status == "True"
            && c.observed_generation == generation
    })
}

/// Phase and the Ready, Progressing and Degraded conditions of an object of `components`.
pub fn judge(components: &[Facts], problem: Option<&Problem>, was_up: bool) -> (Phase, [Cond; 3]) {
    if let Some(p) = problem {
        return (
            Phase::Failed,
            [
                Cond::new(READY, false, &p.reason, p.message.clone()),
                Cond::new(
                    PROGRESSING,
                    false,
                    reason::BLOCKED,
                    "waiting for the problem to be fixed",
                ),
                Cond::new(DEGRADED, false, reason::BLOCKED, "see the Ready condition"),
            ],
        );
    }
    let not_ready: Vec<String> = components
        .iter()
        .filter(|c| !c.ready())
        .map(Facts::line)
        .collect();
    // Replacing failing replicas is repair (Degraded says so), not a rollout.
    let rolling: Vec<String> = components
        .iter()
        .filter(|c| c.rolling && c.failing.is_none())
        .map(Facts::line)
        .collect();
    let mut failing: Vec<String> = components
        .iter()
        .filter_map(|c| Some(format!("{}: {}", c.status.name, c.failing.as_ref()?)))
        .collect();
    if failing.is_empty() && rolling.is_empty() && was_up {
        failing = not_ready.clone();
    }
    // Not ready and not failing: starting, which is progress whatever the backend saw.
    let rolling = if rolling.is_empty() && failing.is_empty() {
        not_ready.clone()
    } else {
        rolling
    };
    let ready = if not_ready.is_empty() {
        Cond::new(READY, true, reason::ALL_READY, "every replica is ready")
    } else {
        Cond::new(READY, false, reason::NOT_READY, not_ready.join("; "))
    };
    let progressing = if rolling.is_empty() {
        Cond::new(
            PROGRESSING,
            false,
            reason::ROLLOUT_COMPLETE,
            "nothing is being rolled out",
        )
    } else {
        Cond::new(PROGRESSING, true, reason::ROLLING_OUT, rolling.join("; "))
    };
    let degraded = if failing.is_empty() {
        Cond::new(
            DEGRADED,
            false,
            reason::AS_EXPECTED,
            "nothing that worked has stopped working",
        )
    } else {
        Cond::new(DEGRADED, true, reason::FAILING, failing.join("; "))
    };
    let phase = if degraded.ok {
        Phase::Degraded
    } else if ready.ok {
        Phase::Ready
    } else {
        Phase::Progressing
    };
    (phase, [ready, progressing, degraded])
}

/// The status of an AppStack.
pub fn appstack(
    generation: Option<i64>,
    old: Option<&AppStackStatus>,
    url: Option<String>,
    components: Vec<Facts>,
    problem: Option<&Problem>,
    now: Timestamp,
) -> AppStackStatus {
    let old = old.map(|o| o.conditions.as_slice()).unwrap_or_default();
    let (phase, wanted) = judge(&components, problem, was_up(old, generation));
    AppStackStatus {
        phase: Some(phase),
        url,
        components: components.into_iter().map(|o| o.status).collect(),
        conditions: conditions(old, &wanted, generation, now),
        observed_generation: generation,
    }
}

/// The conditions of a Worker (its one component), then `QueueReachable` when the autoscaler
/// read (or failed to read) the queue.
pub fn worker_conditions(
    generation: Option<i64>,
    old: &[Condition],
    facts: &Facts,
    problem: Option<&Problem>,
    queue: Option<Cond>,
    now: Timestamp,
) -> Vec<Condition> {
    let (_, wanted) = judge(
        std::slice::from_ref(facts),
        problem,
        was_up(old, generation),
    );
    let mut wanted = wanted.to_vec();
    wanted.extend(queue);
    conditions(old, &wanted, generation, now)
}

/// `QueueReachable` from the last poll: `Err((reason, message))` when the queue could not be
/// read.
pub fn queue_condition(polled: Result<(), (&str, &str)>) -> Cond {
    match polled {
        Ok(()) => Cond::new(
            QUEUE_REACHABLE,
            true,
            reason::QUEUE_READ,
            "the queue is read every pollInterval",
        ),
        Err((reason, message)) => Cond::new(
            QUEUE_REACHABLE,
            false,
            reason,
            format!("{message}; replicas are held until it can be read"),
        ),
    }
}

/// The condition of a type, if present.
pub fn condition<'a>(list: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    list.iter().find(|c| c.type_ == type_)
}
