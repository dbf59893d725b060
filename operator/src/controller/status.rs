//! The status of an AppStack from what was observed: pure, so the rules are tested without a
//! cluster.
//!
//! - a problem a person must fix (invalid reference, missing Secret, failed apply) →
//!   phase `Failed`, `Ready=False` with the problem's reason;
//! - every component ready and rolled out → `Ready`;
//! - a component not ready while the stack was Ready (or Degraded) for this same generation →
//!   `Degraded` (something that worked stopped working);
//! - otherwise → `Progressing` (a rollout or a first start is under way).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::appstack::{AppStackStatus, ComponentStatus, Phase};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// Something a person must act on; reason is CamelCase, message says what to do and never
/// holds a secret value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
    pub message: String,
}

/// One component as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub status: ComponentStatus,
    /// A rollout is under way (new generation not observed yet, or not every replica updated).
    pub rolling: bool,
}

impl Observation {
    fn ready(&self) -> bool {
        !self.rolling && self.status.ready_replicas >= self.status.desired_replicas
    }
}

/// The new status; `lastTransitionTime` of a condition is kept when its status did not change.
pub fn compute(
    generation: Option<i64>,
    old: Option<&AppStackStatus>,
    url: Option<String>,
    components: Vec<Observation>,
    problem: Option<&Problem>,
    now: Timestamp,
) -> AppStackStatus {
    let not_ready: Vec<String> = components
        .iter()
        .filter(|o| !o.ready())
        .map(|o| {
            let s = &o.status;
            let mut m = format!(
                "{} {}/{} ready",
                s.name, s.ready_replicas, s.desired_replicas
            );
            if !s.message.is_empty() {
                m.push_str(&format!(" ({})", s.message));
            }
            m
        })
        .collect();
    let was_up = old.is_some_and(|o| {
        matches!(o.phase, Some(Phase::Ready) | Some(Phase::Degraded))
            && o.observed_generation == generation
    });
    let (phase, ready, progressing, degraded) = match problem {
        Some(p) => (
            Phase::Failed,
            cond(READY, false, &p.reason, &p.message),
            cond(
                PROGRESSING,
                false,
                "Blocked",
                "waiting for the problem to be fixed",
            ),
            cond(DEGRADED, false, "Blocked", "see the Ready condition"),
        ),
        None if not_ready.is_empty() => (
            Phase::Ready,
            cond(
                READY,
                true,
                "AllComponentsReady",
                "every component is ready",
            ),
            cond(
                PROGRESSING,
                false,
                "RolloutComplete",
                "nothing is being rolled out",
            ),
            cond(
                DEGRADED,
                false,
                "AllComponentsReady",
                "every component is ready",
            ),
        ),
        None if was_up => {
            let m = not_ready.join("; ");
            (
                Phase::Degraded,
                cond(READY, false, "ComponentsNotReady", &m),
                cond(
                    PROGRESSING,
                    false,
                    "RolloutComplete",
                    "nothing is being rolled out",
                ),
                cond(DEGRADED, true, "ComponentsNotReady", &m),
            )
        }
        None => {
            let m = not_ready.join("; ");
            (
                Phase::Progressing,
                cond(READY, false, "ComponentsNotReady", &m),
                cond(PROGRESSING, true, "RollingOut", &m),
                cond(
                    DEGRADED,
                    false,
                    "RollingOut",
                    "not ready yet, nothing stopped working",
                ),
            )
        }
    };
    let conditions = [ready, progressing, degraded]
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let previous = old.and_then(|o| o.conditions.iter().find(|c| c.type_ == type_));
            let last_transition_time = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_,
                status,
                reason,
                message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    AppStackStatus {
        phase: Some(phase),
        url,
        components: components.into_iter().map(|o| o.status).collect(),
        conditions,
        observed_generation: generation,
    }
}

fn cond(type_: &str, ok: bool, reason: &str, message: &str) -> (String, String, String, String) {
    (
        type_.to_string(),
        if ok { "True" } else { "False" }.to_string(),
        reason.to_string(),
        // The API server limits messages to 32768 bytes.
        message.chars().take(4000).collect(),
    )
}

/// The condition of a type, if present.
pub fn condition<'a>(status: Option<&'a AppStackStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(name: &str, desired: i32, ready: i32, rolling: bool) -> Observation {
        Observation {
            status: ComponentStatus {
                name: name.into(),
                kind: "api".into(),
                desired_replicas: desired,
                ready_replicas: ready,
                image: "i".into(),
                message: String::new(),
            },
            rolling,
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn phases() {
        let ready = compute(
            Some(1),
            None,
            None,
            vec![obs("api", 2, 2, false)],
            None,
            t(1),
        );
        assert_eq!(ready.phase, Some(Phase::Ready));
        assert_eq!(condition(Some(&ready), READY).unwrap().status, "True");
        assert_eq!(ready.observed_generation, Some(1));
        assert!(ready
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1)));

        let first = compute(
            Some(1),
            None,
            None,
            vec![obs("api", 2, 1, false)],
            None,
            t(1),
        );
        assert_eq!(first.phase, Some(Phase::Progressing));
        assert_eq!(condition(Some(&first), PROGRESSING).unwrap().status, "True");
        assert!(condition(Some(&first), READY)
            .unwrap()
            .message
            .contains("api 1/2 ready"));

        // Worked before, same generation, a pod died: Degraded.
        let broken = compute(
            Some(1),
            Some(&ready),
            None,
            vec![obs("api", 2, 1, false)],
            None,
            t(2),
        );
        assert_eq!(broken.phase, Some(Phase::Degraded));
        assert_eq!(condition(Some(&broken), DEGRADED).unwrap().status, "True");

        // A new generation rolling out is progress, not degradation.
        let rolling = compute(
            Some(2),
            Some(&ready),
            None,
            vec![obs("api", 2, 2, true)],
            None,
            t(2),
        );
        assert_eq!(rolling.phase, Some(Phase::Progressing));

        let p = Problem {
            reason: "SecretNotFound".into(),
            message: "create it".into(),
        };
        let failed = compute(Some(1), None, None, vec![], Some(&p), t(1));
        assert_eq!(failed.phase, Some(Phase::Failed));
        let c = condition(Some(&failed), READY).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SecretNotFound")
        );
    }

    #[test]
    fn unchanged_inputs_give_an_equal_status() {
        let a = compute(
            Some(1),
            None,
            Some("https://x".into()),
            vec![obs("api", 1, 1, false)],
            None,
            t(1),
        );
        let b = compute(
            Some(1),
            Some(&a),
            Some("https://x".into()),
            vec![obs("api", 1, 1, false)],
            None,
            t(99),
        );
        assert_eq!(a, b, "transition times are kept, so nothing needs writing");
        let c = compute(
            Some(1),
            Some(&a),
            Some("https://x".into()),
            vec![obs("api", 1, 0, false)],
            None,
            t(99),
        );
        assert_ne!(a, c);
        assert_eq!(
            condition(Some(&c), READY).unwrap().last_transition_time,
            Time(t(99))
        );
    }
}
