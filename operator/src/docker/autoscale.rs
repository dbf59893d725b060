//! Queue-depth autoscaling on a Docker host: the shared [`crate::autoscale`] engine decides
//! (same `Policy`, same probes, same decision as on Kubernetes); this file only connects it to
//! the reconcile loop.
//!
//! - [`HostScaler`] is the loop's [`ReplicaSource`]: a Worker with `scaling` runs the count the
//!   driver last set (before its first decision: the replicas that exist, clamped to
//!   `[minReplicas, maxReplicas]`). Surplus replicas go newest first with SIGTERM and the stop
//!   timeout (`terminationGracePeriodSeconds`), as [`super::converge`] does for every group.
//! - It is also a [`HostHook`]: after every pass it hands the driver the Workers with `scaling`
//!   (their Redis from the resolved `REDIS_URL`) and writes `queueDepth`, `lastScaleTime` and
//!   the `QueueReachable` condition into their status.
//! - [`HostTarget`] is the driver's [`ScaleTarget`]: `scale` records the count and wakes the loop
//!   (event-driven: one pass per change). A stack's own Redis is on an internal network that
//!   publishes no port, so the probes reach it through `docker exec` in the Redis container:
//!   a relay (`nc`, else bash's `/dev/tcp`) to `127.0.0.1:<port>` gets AUTH, the probe pipeline
//!   and QUIT on its stdin (never on a command line) — one exec per poll. Any other Redis URL
//!   goes through the shared connection pool.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use redis::{Pipeline, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::api::{WorkerSpec, WorkerStatus};
use crate::autoscale::{
    Driver, Policy, PollOutcome, QueueProbe, RedisTarget, ScaleChange, ScaleTarget, TargetError,
    WorkerEntry, WorkerId,
};
use crate::plan::worker::start_replicas;
use crate::status::{queue_condition, set_condition};

use super::desired::{DesiredHost, Kind, ObjectKey};
use super::engine::Engine;
use super::run::{HostHook, PassContext, ReplicaSource};
use super::state::StateDir;
use super::status;

mod relay;
use relay::{in_stack_relay, Relay};
pub use relay::{parse_replies, RELAY_TIMEOUT};

/// The replica count a Worker starts from, before the driver's first decision: the shared
/// rule, [`start_replicas`], with the containers that run (none: nothing known to run).
pub fn initial_replicas(spec: &WorkerSpec, current: i32) -> i32 {
    start_replicas(spec, (current > 0).then_some(current))
}

/// What berth knows of one scaled Worker.
#[derive(Clone, Debug, Default)]
struct Scaled {
    /// The count handed to the reconcile loop.
    replicas: Option<i32>,
    /// Set by the driver (from then on the loop runs exactly this).
    decided: bool,
    depth: Option<i64>,
    /// `(reason, message)` when the queue could not be read.
    unreachable: Option<(String, String)>,
    polled: bool,
    last_scale_time: Option<Time>,
    /// When `QueueReachable` last changed (kept here: every pass rewrites the status).
    reachable_since: Option<(bool, Time)>,
}

impl Scaled {
    fn set_unreachable(&mut self, now: Option<(String, String)>) {
        self.polled = true;
        let ok = now.is_none();
        if self.reachable_since.as_ref().map(|r| r.0) != Some(ok) {
            self.reachable_since = Some((ok, Time(Timestamp::now())));
        }
        self.unreachable = now;
    }
}

/// The driver's side of the host: replica counts, status, the exec relay.
pub struct HostTarget {
    engine: Engine,
    state: StateDir,
    wake: mpsc::UnboundedSender<()>,
    workers: Mutex<HashMap<WorkerId, Scaled>>,
    relays: Mutex<HashMap<RedisTarget, Relay>>,
    status_lock: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HostTarget {
    fn write_status(&self, id: &str) {
        let Some(s) = lock(&self.workers).get(id).cloned() else {
            return;
        };
        let _guard = lock(&self.status_lock);
        let key = ObjectKey {
            kind: Kind::Worker,
            name: id.to_string(),
        };
        let Some(stored) = status::read(&self.state, &key) else {
            return;
        };
        let Ok(mut st) = serde_json::from_value::<WorkerStatus>(stored.status) else {
            return;
        };
        let before = st.clone();
        apply_status(&mut st, &s);
        if st == before {
            return;
        }
        if let Ok(v) = serde_json::to_value(&st) {
            if let Err(e) = status::write(&self.state, &key, v) {
                warn!(worker = %id, error = %e, "cannot write the status");
            }
        }
    }
}

/// Merges what the autoscaler measured into a Worker's status (as on Kubernetes).
fn apply_status(st: &mut WorkerStatus, s: &Scaled) {
    if let Some(n) = s.replicas {
        st.desired_replicas = Some(n);
    }
    st.last_scale_time = s.last_scale_time.clone().or(st.last_scale_time.take());
    if !s.polled {
        return;
    }
    st.queue_depth = if s.unreachable.is_none() {
        s.depth
    } else {
        None
    };
    let wanted = match &s.unreachable {
        None => queue_condition(Ok(())),
        Some((r, m)) => queue_condition(Err((r, m))),
    };
    // A condition the pass did not carry over flipped when the autoscaler saw it flip.
    let now = s
        .reachable_since
        .as_ref()
        .filter(|r| r.0 == wanted.ok)
        .map(|r| r.1 .0)
        .unwrap_or_else(Timestamp::now);
    let generation = st.observed_generation;
    set_condition(&mut st.conditions, wanted, generation, now);
}

impl ScaleTarget for HostTarget {
    async fn current_replicas(&self, id: &WorkerId) -> Result<i32, TargetError> {
        lock(&self.workers)
            .get(id)
            .and_then(|s| s.replicas)
            .ok_or_else(|| TargetError(format!("worker {id} has not been reconciled yet")))
    }

    async fn scale(&self, id: &WorkerId, change: &ScaleChange) -> Result<(), TargetError> {
        {
            let mut w = lock(&self.workers);
            let s = w.entry(id.clone()).or_default();
            s.replicas = Some(change.to);
            s.decided = true;
            s.last_scale_time = Some(Time(Timestamp::now()));
        }
        self.wake
            .send(())
            .map_err(|_| TargetError("the host loop has stopped".into()))
    }

    async fn observed(&self, id: &WorkerId, outcome: &PollOutcome) {
        {
            let mut w = lock(&self.workers);
            let Some(s) = w.get_mut(id) else { return };
            match &outcome.depth {
                Ok(d) => {
                    s.depth = Some(d.total());
                    s.set_unreachable(None);
                }
                Err(e) => s.set_unreachable(Some((e.reason().to_string(), e.to_string()))),
            }
        }
        self.write_status(id);
    }

    async fn relay(
        &self,
        redis: &RedisTarget,
        pipe: &Pipeline,
    ) -> Option<Result<Vec<Value>, String>> {
        let relay = lock(&self.relays).get(redis).cloned()?;
        Some(self.exec_relay(&relay, pipe).await)
    }
    fn subscribable(&self, redis: &RedisTarget) -> bool {
        !lock(&self.relays).contains_key(redis)
    }
}

/// The autoscaler of a Docker host: replica source and after-pass hook of the reconcile loop.
#[derive(Clone)]
pub struct HostScaler {
    driver: Driver<HostTarget>,
}

impl HostScaler {
    /// A scaler that wakes the loop through `wake`.
    pub fn new(engine: Engine, state: StateDir, wake: mpsc::UnboundedSender<()>) -> HostScaler {
        HostScaler {
            driver: Driver::new(HostTarget {
                engine,
                state,
                wake,
                workers: Mutex::default(),
                relays: Mutex::default(),
                status_lock: Mutex::default(),
            }),
        }
    }

    /// Wires a scaler into `host` and starts its driver (with keyspace-notification wake-ups
    /// when `keyspace`); the driver stops with `shutdown`.
    pub fn attach(
        host: super::run::Host,
        shutdown: CancellationToken,
        keyspace: bool,
    ) -> super::run::Host {
        let scaler = Arc::new(HostScaler::new(
            host.engine.clone(),
            host.state.clone(),
            host.waker(),
        ));
        let driver = scaler.driver.clone();
        driver.set_keyspace_notifications(keyspace);
        tokio::spawn(async move { driver.run(shutdown).await });
        host.with_replica_source(scaler.clone()).with_hook(scaler)
    }

    /// The driver (for tests).
    pub fn driver(&self) -> &Driver<HostTarget> {
        &self.driver
    }

    /// Hands the driver the Workers with `scaling` of a desired state; forgets the others.
    pub fn sync(&self, desired: &DesiredHost) {
        let groups: HashSet<&str> = desired.groups().map(|g| g.name()).collect();
        let mut keep = HashSet::new();
        let mut relays = HashMap::new();
        for o in &desired.objects {
            let Some(spec) = &o.worker else { continue };
            let Some(scaling) = &spec.scaling else {
                continue;
            };
            let id = o.key.name.clone();
            let target = &self.driver.target();
            let fail = |reason: &str, message: String| {
                let mut w = lock(&target.workers);
                w.entry(id.clone())
                    .or_default()
                    .set_unreachable(Some((reason.to_string(), message)));
            };
            let policy = match Policy::from_spec(scaling) {
                Ok(p) => p,
                Err(e) => {
                    fail("InvalidScaling", e.to_string());
                    continue;
                }
            };
            let probe = match QueueProbe::new(&spec.queue) {
                Ok(p) => p,
                Err(e) => {
                    fail(e.reason(), e.to_string());
                    continue;
                }
            };
            let url = o
                .groups
                .first()
                .and_then(|g| g.env.iter().find_map(|e| e.strip_prefix("REDIS_URL=")))
                .map(str::to_string);
            let Some(url) = url else {
                fail(
                    "RedisUnreachable",
                    "the worker has no REDIS_URL: set queue.redis or appStackRef".into(),
                );
                continue;
            };
            let redis = RedisTarget::new(url.clone(), None);
            if let Some(relay) = in_stack_relay(&url, &groups) {
                relays.insert(redis.clone(), relay);
            }
            keep.insert(id.clone());
            self.driver.upsert(WorkerEntry {
                id,
                policy,
                probe,
                redis,
            });
        }
        *lock(&self.driver.target().relays) = relays;
        // Which Redis servers are reached directly may have changed with the relays.
        self.driver.refresh_keyspace();
        for id in self.driver.ids() {
            if !keep.contains(&id) {
                self.driver.remove(&id);
            }
        }
        let mut w = lock(&self.driver.target().workers);
        // Forget Workers that are gone or lost `scaling` (a new `scaling` starts afresh).
        w.retain(|id, _| {
            desired.objects.iter().any(|o| {
                o.key.kind == Kind::Worker
                    && &o.key.name == id
                    && o.worker.as_ref().is_some_and(|w| w.scaling.is_some())
            })
        });
    }
}

impl ReplicaSource for HostScaler {
    fn replicas(&self, worker: &str, spec: &WorkerSpec, planned: i32, current: i32) -> i32 {
        if spec.scaling.is_none() {
            return planned;
        }
        let mut w = lock(&self.driver.target().workers);
        let s = w.entry(worker.to_string()).or_default();
        match s.replicas {
            Some(n) if s.decided => n,
            _ => {
                let n = initial_replicas(spec, current);
                s.replicas = Some(n);
                n
            }
        }
    }
}

impl HostHook for HostScaler {
    fn after_pass<'a>(&'a self, ctx: PassContext<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.sync(ctx.desired);
            for id in self.driver.ids() {
                self.driver.target().write_status(&id);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: i32, max: i32) -> WorkerSpec {
        serde_json::from_value(serde_json::json!({
            "image": "w:1",
            "queue": {"type": "list", "name": "jobs"},
            "scaling": {"minReplicas": min, "maxReplicas": max, "jobsPerReplica": 5},
            "appStackRef": "s"
        }))
        .unwrap()
    }

    #[test]
    fn initial_count_keeps_what_runs_within_the_policy() {
        assert_eq!(initial_replicas(&spec(0, 3), 0), 0);
        assert_eq!(initial_replicas(&spec(1, 3), 2), 2);
        assert_eq!(initial_replicas(&spec(1, 3), 7), 3);
        let mut fixed = spec(1, 3);
        fixed.scaling = None;
        fixed.replicas = Some(2);
        assert_eq!(initial_replicas(&fixed, 5), 2);
    }

    #[test]
    fn status_gets_depth_and_queue_reachable() {
        let mut st = WorkerStatus::default();
        let mut s = Scaled {
            replicas: Some(3),
            polled: true,
            depth: Some(12),
            ..Default::default()
        };
        apply_status(&mut st, &s);
        assert_eq!(st.queue_depth, Some(12));
        assert_eq!(st.desired_replicas, Some(3));
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == "QueueReachable")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "QueueRead")
        );
        // A pass rewrites the status without the condition: its transition time is kept.
        let since = st.conditions[0].last_transition_time.clone();
        st.conditions.clear();
        s.set_unreachable(None);
        let first = s.reachable_since.clone().unwrap().1;
        apply_status(&mut st, &s);
        assert_eq!(st.conditions[0].last_transition_time, first);
        assert!(since <= first);
        s.set_unreachable(Some(("RedisUnreachable".into(), "no answer".into())));
        apply_status(&mut st, &s);
        assert_eq!(st.queue_depth, None);
        let c: Vec<_> = st
            .conditions
            .iter()
            .filter(|c| c.type_ == "QueueReachable")
            .collect();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, "False");
        assert!(c[0].message.contains("held"));
    }
}
