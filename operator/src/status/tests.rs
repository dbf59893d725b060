//! The shared rules, and table tests that feed each backend's own observation of the same
//! situation (a Deployment's status on Kubernetes, the host's replicas through
//! `converge::decide`) and assert the same phase and conditions.

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;

use super::*;
use crate::api::{AppStack, WorkerStatus};
use crate::controller::cache::Record;
use crate::controller::observe::deployment_facts;
use crate::docker::converge::{decide, GroupSpec, Health, Replica};
use crate::docker::desired::{DesiredGroup, Kind, ObjectKey};
use crate::docker::status::{group_facts, worker_status, Summary};
use crate::plan::Component;
use crate::workers::state::Runtime;

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

/// The AppStack status of `components` at generation `g`, time `secs`, without a problem.
fn at(g: i64, old: Option<&AppStackStatus>, components: Vec<Facts>, secs: i64) -> AppStackStatus {
    appstack(Some(g), old, None, components, None, t(secs))
}

fn facts(name: &str, desired: i32, ready: i32, rolling: bool) -> Facts {
    Facts {
        status: ComponentStatus {
            name: name.into(),
            kind: "api".into(),
            desired_replicas: desired,
            ready_replicas: ready,
            image: "i".into(),
            message: String::new(),
        },
        rolling,
        failing: None,
    }
}

#[test]
fn phases() {
    let ready = at(1, None, vec![facts("api", 2, 2, false)], 1);
    assert_eq!(ready.phase, Some(Phase::Ready));
    assert_eq!(condition(&ready.conditions, READY).unwrap().status, "True");
    assert_eq!(ready.observed_generation, Some(1));
    assert!(ready
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(1)));

    let first = at(1, None, vec![facts("api", 2, 1, false)], 1);
    assert_eq!(first.phase, Some(Phase::Progressing));
    assert_eq!(
        condition(&first.conditions, PROGRESSING).unwrap().status,
        "True"
    );
    assert!(condition(&first.conditions, READY)
        .unwrap()
        .message
        .contains("api 1/2 ready"));

    // Worked before, same generation, a pod died: Degraded.
    let broken = at(1, Some(&ready), vec![facts("api", 2, 1, false)], 2);
    assert_eq!(broken.phase, Some(Phase::Degraded));
    assert_eq!(
        condition(&broken.conditions, DEGRADED).unwrap().status,
        "True"
    );

    // A new generation rolling out is progress, not degradation.
    let rolling = at(2, Some(&ready), vec![facts("api", 2, 2, true)], 2);
    assert_eq!(rolling.phase, Some(Phase::Progressing));

    // A failing component is Degraded, with its message.
    let mut failing = facts("api", 1, 1, false);
    failing.failing = Some("new replica unhealthy".into());
    let degraded = at(1, None, vec![failing], 1);
    assert_eq!(degraded.phase, Some(Phase::Degraded));
    let c = condition(&degraded.conditions, DEGRADED).unwrap();
    assert_eq!(c.status, "True");
    assert_eq!(c.message, "api: new replica unhealthy");

    let p = Problem::new("SecretNotFound", "create it");
    let failed = appstack(Some(1), None, None, vec![], Some(&p), t(1));
    assert_eq!(failed.phase, Some(Phase::Failed));
    let c = condition(&failed.conditions, READY).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "SecretNotFound")
    );
    // Ready first, as `berth host status` and the tests read conditions[0].
    assert_eq!(failed.conditions[0].type_, READY);
}

#[test]
fn unchanged_inputs_give_an_equal_status() {
    let url = || Some("https://x".to_string());
    let a = appstack(
        Some(1),
        None,
        url(),
        vec![facts("api", 1, 1, false)],
        None,
        t(1),
    );
    let b = appstack(
        Some(1),
        Some(&a),
        url(),
        vec![facts("api", 1, 1, false)],
        None,
        t(99),
    );
    assert_eq!(a, b, "transition times are kept, so nothing needs writing");
    let c = appstack(
        Some(1),
        Some(&a),
        url(),
        vec![facts("api", 1, 0, false)],
        None,
        t(99),
    );
    assert_ne!(a, c);
    assert_eq!(
        condition(&c.conditions, READY)
            .unwrap()
            .last_transition_time,
        Time(t(99))
    );
}

#[test]
fn conditions_keep_transition_time() {
    let t0 = t(1_700_000_000);
    let old = conditions(&[], &[Cond::new(READY, true, "Ready", "")], Some(1), t0);
    let now = Timestamp::now();
    let same = conditions(&old, &[Cond::new(READY, true, "Ready", "x")], Some(2), now);
    assert_eq!(same[0].last_transition_time, Time(t0));
    let flipped = conditions(&old, &[Cond::new(READY, false, "No", "")], Some(2), now);
    assert_eq!(flipped[0].last_transition_time, Time(now));
    let mut list = old.clone();
    set_condition(&mut list, queue_condition(Ok(())), Some(1), now);
    set_condition(&mut list, queue_condition(Ok(())), Some(1), t(5));
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].last_transition_time, Time(now));
}

#[test]
fn an_unreadable_queue_keeps_its_first_message_until_the_reason_changes() {
    let now = Timestamp::now();
    let mut list = Vec::new();
    let down = |m: &str| queue_condition(Err(("QueueUnreachable", m)));
    set_condition(&mut list, down("timed out"), Some(1), t(1));
    let first = list.clone();
    // The next polls fail with other texts, for the same reason: nothing changes, so nothing
    // is written.
    set_condition(
        &mut list,
        down("failed to lookup address information"),
        Some(1),
        now,
    );
    assert_eq!(list, first);
    // Another reason replaces the message (the transition time stays: still False).
    set_condition(
        &mut list,
        queue_condition(Err(("QueueAuthFailed", "WRONGPASS"))),
        Some(1),
        now,
    );
    assert_eq!(list[0].reason, "QueueAuthFailed");
    assert!(list[0].message.starts_with("WRONGPASS"), "{:?}", list[0]);
    assert_eq!(list[0].last_transition_time, first[0].last_transition_time);
    // Readable again: the new message.
    set_condition(&mut list, queue_condition(Ok(())), Some(1), now);
    assert_eq!(list[0].status, "True");
    // Other conditions follow every message change.
    let ready = conditions(
        &[],
        &[Cond::new(READY, false, "R", "api 1/3 ready")],
        Some(1),
        now,
    );
    let later = conditions(
        &ready,
        &[Cond::new(READY, false, "R", "api 2/3 ready")],
        Some(1),
        now,
    );
    assert_eq!(later[0].message, "api 2/3 ready");
}

// --- The same situation seen by each backend ---------------------------------------------

/// The api component of a small stack, as the planner makes it.
fn api() -> Component {
    let stack: AppStack = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
        "metadata": {"name": "s", "namespace": "p", "generation": 1},
        "spec": {"api": {"image": "api:2", "replicas": 2, "port": 3000}}
    }))
    .unwrap();
    let plan = crate::plan::plan_stack(&stack, &Default::default()).unwrap();
    plan.components
        .into_iter()
        .find(|c| c.name == "api")
        .unwrap()
}

/// A Deployment's status: `(observedGeneration, replicas, updated, ready)`.
fn rs(observed: i64, replicas: i32, updated: i32, ready: i32) -> serde_json::Value {
    json!({"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
        "readyReplicas": ready, "availableReplicas": ready})
}

/// Kubernetes: the api's Deployment with `status`, at `generation`.
fn k8s(c: &Component, generation: i64, status: serde_json::Value) -> Facts {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": c.host, "generation": generation},
        "spec": {"replicas": c.replicas, "selector": {}, "template": {}},
        "status": status,
    }))
    .unwrap();
    deployment_facts(c, Some(&Record::of_object(d)))
}

/// A Docker host: the api's containers `(version, health)`; the wanted version is `new`.
fn host(c: &Component, replicas: &[(&str, Health)]) -> Facts {
    let observed: Vec<Replica> = replicas
        .iter()
        .enumerate()
        .map(|(i, (hash, health))| Replica {
            name: format!("{}-{}", c.host, i + 1),
            replica: i as u32 + 1,
            hash: hash.to_string(),
            health: *health,
            image: format!("api:{hash}"),
        })
        .collect();
    let spec = GroupSpec {
        hash: "new".into(),
        replicas: c.replicas as u32,
        recreate: false,
    };
    let d = decide(&spec, &observed, &[]);
    group_facts(&group(c), &d, None)
}

fn group(c: &Component) -> DesiredGroup {
    DesiredGroup {
        object: ObjectKey {
            kind: Kind::AppStack,
            name: "s".into(),
        },
        stack: "s".into(),
        component: c.clone(),
        replicas: c.replicas,
        env: vec![],
        networks: vec![],
        volume: None,
        waits_for: vec![],
        recreate: false,
    }
}

type Outcome = (Option<Phase>, Vec<(String, String, String)>);

fn outcome(s: &AppStackStatus) -> Outcome {
    (
        s.phase,
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect(),
    )
}

fn expect(phase: Phase, conds: [(&str, bool, &str); 3]) -> Outcome {
    (
        Some(phase),
        conds
            .iter()
            .map(|(t, ok, r)| {
                (
                    t.to_string(),
                    if *ok { "True" } else { "False" }.to_string(),
                    r.to_string(),
                )
            })
            .collect(),
    )
}

#[test]
fn appstack_reads_the_same_on_both_backends() {
    use reason::*;
    use Health::{Ready as Up, Starting, Stopped, Unhealthy};
    let c = api();
    let was_ready = at(1, None, vec![facts("api", 2, 2, false)], 1);
    let done = rs(1, 2, 2, 2);
    let progressing = expect(
        Phase::Progressing,
        [
            (READY, false, NOT_READY),
            (PROGRESSING, true, ROLLING_OUT),
            (DEGRADED, false, AS_EXPECTED),
        ],
    );
    let degraded = expect(
        Phase::Degraded,
        [
            (READY, false, NOT_READY),
            (PROGRESSING, false, ROLLOUT_COMPLETE),
            (DEGRADED, true, FAILING),
        ],
    );
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, i64, Option<&AppStackStatus>, Facts, Facts, Outcome)> = vec![
        (
            "every replica ready",
            1,
            None,
            k8s(&c, 1, done.clone()),
            host(&c, &[("new", Up), ("new", Up)]),
            expect(
                Phase::Ready,
                [
                    (READY, true, ALL_READY),
                    (PROGRESSING, false, ROLLOUT_COMPLETE),
                    (DEGRADED, false, AS_EXPECTED),
                ],
            ),
        ),
        (
            "first start",
            1,
            None,
            k8s(
                &c,
                1,
                json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2}),
            ),
            host(&c, &[("new", Starting), ("new", Starting)]),
            progressing.clone(),
        ),
        (
            "nothing created yet",
            1,
            None,
            deployment_facts(&c, None),
            host(&c, &[]),
            progressing.clone(),
        ),
        (
            "a new version rolling out",
            2,
            Some(&was_ready),
            k8s(&c, 2, rs(2, 3, 1, 2)),
            host(&c, &[("old", Up), ("old", Up)]),
            progressing.clone(),
        ),
        (
            "a new version that does not become healthy",
            2,
            Some(&was_ready),
            k8s(&c, 2, {
                let mut st = rs(2, 3, 1, 2);
                st["conditions"] = json!([{"type": "Progressing", "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": "ReplicaSet s-api-2 has timed out progressing."}]);
                st
            }),
            host(&c, &[("old", Up), ("old", Up), ("new", Unhealthy)]),
            degraded.clone(),
        ),
        (
            "a replica that worked stopped",
            1,
            Some(&was_ready),
            k8s(&c, 1, rs(1, 2, 2, 1)),
            host(&c, &[("new", Up), ("new", Stopped)]),
            degraded.clone(),
        ),
    ];
    for (situation, generation, old, kube, docker, want) in cases {
        let p = |f: Facts| appstack(Some(generation), old, None, vec![f], None, t(5));
        let (on_k8s, on_host) = (p(kube), p(docker));
        assert_eq!(outcome(&on_k8s), want, "{situation}: Kubernetes");
        assert_eq!(outcome(&on_host), want, "{situation}: Docker host");
    }
    // A problem reads the same whatever was observed.
    let problem = Problem::new("SecretNotFound", "create the Secret s-keys");
    let k = appstack(
        Some(1),
        None,
        None,
        vec![k8s(&c, 1, done)],
        Some(&problem),
        t(5),
    );
    let h = appstack(Some(1), None, None, vec![], Some(&problem), t(5));
    assert_eq!(outcome(&k), outcome(&h));
    assert_eq!(
        outcome(&k),
        expect(
            Phase::Failed,
            [
                (READY, false, "SecretNotFound"),
                (PROGRESSING, false, BLOCKED),
                (DEGRADED, false, BLOCKED),
            ],
        )
    );
}

fn worker_outcome(s: &WorkerStatus) -> Vec<(String, String, String)> {
    s.conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

#[test]
fn worker_reads_the_same_on_both_backends() {
    use Health::{Ready as Up, Stopped};
    let mut c = api();
    c.name = "s-render".into();
    c.host = "s-render".into();
    c.kind = crate::plan::ComponentKind::Worker;
    c.replicas = 3;
    let runtime = |available: i32, ready_at: i32| Runtime {
        name: "s-render".into(),
        generation: Some(1),
        deployment_replicas: 3,
        observed_replicas: 3,
        available_replicas: available,
        ready_at,
        ..Runtime::default()
    };
    let host_status = |replicas: &[(&str, Health)], old: Option<&WorkerStatus>| {
        let facts = host(&c, replicas);
        let s = Summary {
            components: vec![facts],
            generation: Some(1),
            ..Default::default()
        };
        worker_status(&s, "s-render", old)
    };
    let ready = runtime(3, 3).status(&WorkerStatus::default(), t(1));
    let cases = [
        (
            "every replica ready",
            runtime(3, 3).status(&WorkerStatus::default(), t(2)),
            host_status(&[("new", Up), ("new", Up), ("new", Up)], None),
        ),
        (
            "scaled up from 1 to 3: starting",
            runtime(1, 1).status(&WorkerStatus::default(), t(2)),
            host_status(&[("new", Up)], None),
        ),
        (
            "a replica that worked stopped",
            runtime(2, 3).status(&ready, t(2)),
            host_status(&[("new", Up), ("new", Up), ("new", Stopped)], Some(&ready)),
        ),
    ];
    let mut seen = Vec::new();
    for (situation, kube, docker) in cases {
        assert_eq!(
            worker_outcome(&kube),
            worker_outcome(&docker),
            "{situation}"
        );
        assert_eq!(kube.selector, docker.selector, "{situation}");
        seen.push(worker_outcome(&kube)[0].2.clone());
    }
    assert_eq!(
        seen,
        [reason::ALL_READY, reason::NOT_READY, reason::NOT_READY]
    );
}
