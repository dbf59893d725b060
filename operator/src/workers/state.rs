//! What the controller knows about each Worker between reconciles, the Kubernetes
//! [`ScaleTarget`] (scale subresource of the Deployment, events, metrics) and the single
//! writer of Worker status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Client;

use crate::api::{Worker, WorkerStatus};
use crate::autoscale::{
    PollOutcome, ProbeError, RedisTarget, ScaleChange, ScaleTarget, TargetError, WorkerId,
};
use crate::k8s::meta::MANAGER;

use super::build::differs_beyond_depth;
use super::metrics::{Metrics, WorkerLabels};
use crate::api::appstack::ComponentStatus;
use crate::plan::names;
use crate::status::{queue_condition, worker_conditions, Cond, Facts, Problem};

/// A status whose only change is the queue depth is written at most this often (the depth
/// changes on nearly every poll of a busy queue).
pub const DEPTH_ONLY_WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// The controller's view of one Worker.
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub object_ref: ObjectReference,
    /// `spec.replicas` of the Deployment: what the autoscaler changes.
    pub deployment_replicas: i32,
    /// Pods the Deployment has / has available.
    pub observed_replicas: i32,
    pub available_replicas: i32,
    /// The Deployment is rolling out (new generation not observed, or not every replica
    /// updated).
    pub rolling: bool,
    /// The replica count at which every replica was last available: more wanted now means
    /// replicas are starting (progress), fewer available means some stopped (degraded).
    pub ready_at: i32,
    pub scaling: bool,
    /// Why the Worker cannot be carried out (Ready=False), if it cannot.
    pub config_error: Option<Cond>,
    /// The last probe: the depth, or why it failed.
    pub queue: Option<Result<i64, ProbeError>>,
    pub desired: Option<i32>,
    pub last_scale_time: Option<Time>,
    pub written: Option<WorkerStatus>,
    /// `deployment_replicas` comes from the API server (a Deployment was applied or read).
    pub deployment_known: bool,
    /// Consecutive failed reconciles, for the exponential backoff.
    pub failures: u32,
    pub last_write: Option<Instant>,
    /// The Redis target last read from the Worker's Secret.
    pub redis: Option<CachedRedis>,
}

/// A Redis target read from a Secret, and for what.
#[derive(Clone, Debug)]
pub struct CachedRedis {
    /// Secret, key and the generations of the Worker and its AppStack it was read for.
    pub read_for: String,
    pub read_at: Instant,
    /// The queue probe was failing when it was read (so a failure is not a reason to read it
    /// again until a probe succeeded).
    pub read_while_failing: bool,
    pub target: RedisTarget,
}

impl Runtime {
    /// The cached Redis target, unless it was read for something else, is older than
    /// `refresh`, or the probe started failing since it was read (rotated credentials).
    pub fn cached_redis(&self, read_for: &str, refresh: Duration) -> Option<RedisTarget> {
        let c = self.redis.as_ref()?;
        let failing = matches!(self.queue, Some(Err(_)));
        (c.read_for == read_for
            && c.read_at.elapsed() < refresh
            && (!failing || c.read_while_failing))
            .then(|| c.target.clone())
    }

    /// Remembers a Redis target just read from its Secret.
    pub fn remember_redis(&mut self, read_for: String, target: RedisTarget) {
        self.redis = Some(CachedRedis {
            read_for,
            read_at: Instant::now(),
            read_while_failing: matches!(self.queue, Some(Err(_))),
            target,
        });
    }

    /// The Worker as the shared status rules see it: its one component.
    pub fn facts(&self) -> Facts {
        let desired = self.desired.unwrap_or(self.deployment_replicas);
        Facts {
            status: ComponentStatus {
                name: self.name.clone(),
                kind: "worker".into(),
                desired_replicas: desired,
                ready_replicas: self.available_replicas,
                image: String::new(),
                message: String::new(),
            },
            // Replicas added since the Worker was last fully available are starting.
            rolling: self.rolling || desired > self.ready_at,
            failing: None,
        }
    }

    /// The status this runtime should show (`old` supplies condition transition times).
    pub fn status(&self, old: &WorkerStatus, now: Timestamp) -> WorkerStatus {
        let problem = self
            .config_error
            .as_ref()
            .map(|c| Problem::new(c.reason.clone(), c.message.clone()));
        let queue = match &self.queue {
            Some(Ok(_)) if self.scaling => Some(queue_condition(Ok(()))),
            Some(Err(e)) if self.scaling => {
                Some(queue_condition(Err((e.reason(), &e.to_string()))))
            }
            _ => None,
        };
        let facts = self.facts();
        WorkerStatus {
            replicas: self.observed_replicas,
            desired_replicas: Some(facts.status.desired_replicas),
            queue_depth: match &self.queue {
                Some(Ok(d)) if self.scaling => Some(*d),
                _ => None,
            },
            last_scale_time: self.last_scale_time.clone(),
            selector: Some(names::worker_selector(&self.name)),
            conditions: worker_conditions(
                self.generation,
                &old.conditions,
                &facts,
                problem.as_ref(),
                queue,
                now,
            ),
            observed_generation: self.generation,
        }
    }
}

/// State shared by the reconciler and the autoscaler.
pub struct Shared {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Boxed: a `Runtime` is several hundred bytes, and a hash table keeps room for up to
    /// twice its entries (1,000 Workers: 1.4 MB of table inline, 0.2 MB boxed).
    pub workers: Mutex<HashMap<WorkerId, Box<Runtime>>>,
    /// Held while the replica count is read-and-applied or scaled, so a reconcile never
    /// re-applies a count the autoscaler just changed.
    pub replicas_lock: tokio::sync::Mutex<()>,
    status_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    pub fn new(client: Client, recorder: Recorder, metrics: Arc<Metrics>) -> Shared {
        Shared {
            client,
            recorder,
            metrics,
            workers: Mutex::new(HashMap::new()),
            replicas_lock: tokio::sync::Mutex::new(()),
            status_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn with<R>(&self, id: &str, f: impl FnOnce(&mut Runtime) -> R) -> Option<R> {
        let mut w = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        w.get_mut(id).map(|rt| f(rt))
    }

    pub fn upsert(&self, id: &str, f: impl FnOnce(&mut Runtime)) {
        let mut w = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        f(w.entry(id.to_string()).or_default());
    }

    pub fn forget(&self, id: &str) {
        let mut w = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = w.remove(id) {
            let l = WorkerLabels::new(&rt.namespace, &rt.name);
            self.metrics.forget(&l);
        }
    }

    /// Writes the Worker's status if it changed (depth-only changes at most every
    /// [`DEPTH_ONLY_WRITE_INTERVAL`]). Server-side apply of the whole status: fields no longer
    /// set disappear. Returns false when the Worker no longer exists.
    pub async fn write_status(&self, id: &str, force_depth: bool) -> Result<bool, kube::Error> {
        let _guard = self.status_lock.lock().await;
        let Some((ns, name, status)) = self
            .with(id, |rt| {
                let old = rt.written.clone().unwrap_or_default();
                let new = rt.status(&old, Timestamp::now());
                let changed = match &rt.written {
                    None => true,
                    Some(w) if differs_beyond_depth(w, &new) => true,
                    Some(w) => {
                        w.queue_depth != new.queue_depth
                            && (force_depth
                                || rt
                                    .last_write
                                    .is_none_or(|t| t.elapsed() >= DEPTH_ONLY_WRITE_INTERVAL))
                    }
                };
                if changed {
                    // Statuses hold no secrets (URLs in messages are redacted).
                    tracing::debug!(worker = %id, old = ?rt.written, new = ?new, "status changed");
                }
                changed.then(|| (rt.namespace.clone(), rt.name.clone(), new))
            })
            .flatten()
        else {
            return Ok(true);
        };
        let api: Api<Worker> = Api::namespaced(self.client.clone(), &ns);
        let body = serde_json::json!({
            "apiVersion": crate::api::API_VERSION,
            "kind": "Worker",
            "status": status,
        });
        // Boxed while it runs: at each poll every Worker's `observed` waits for the status
        // lock, and the request's future would otherwise be part of each of them.
        let pp = PatchParams::apply(MANAGER).force();
        match Box::pin(api.patch_status(&name, &pp, &Patch::Apply(&body))).await {
            Ok(_) => {
                self.with(id, |rt| {
                    rt.written = Some(status);
                    rt.last_write = Some(Instant::now());
                });
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The Kubernetes side of the autoscaler.
#[derive(Clone)]
pub struct KubeTarget {
    pub shared: Arc<Shared>,
}

impl KubeTarget {
    /// Sets the Deployment's replica count through its scale subresource and records the event.
    async fn patch_replicas(&self, id: &WorkerId, change: &ScaleChange) -> Result<(), TargetError> {
        let _guard = self.shared.replicas_lock.lock().await;
        let Some((ns, name, object_ref)) = self.shared.with(id, |rt| {
            (rt.namespace.clone(), rt.name.clone(), rt.object_ref.clone())
        }) else {
            return Err(TargetError(format!("Worker {id} is gone")));
        };
        let api: Api<Deployment> = Api::namespaced(self.shared.client.clone(), &ns);
        let pp = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        let body = serde_json::json!({"spec": {"replicas": change.to}});
        api.patch_scale(&name, &pp, &Patch::Merge(&body))
            .await
            .map_err(|e| TargetError(format!("scaling Deployment {ns}/{name} failed: {e}")))?;
        self.shared.with(id, |rt| {
            rt.deployment_replicas = change.to;
            rt.last_scale_time = Some(Time(Timestamp::now()));
        });
        let l = WorkerLabels::new(&ns, &name);
        self.shared.metrics.scale_events.get_or_create(&l).inc();
        let depth = change
            .depth
            .map_or_else(|| "unknown".to_string(), |d| d.to_string());
        let note = format!(
            "replicas {} → {} (queue depth {depth}, {})",
            change.from, change.to, change.reason
        );
        let ev = Event {
            type_: EventType::Normal,
            reason: "Scaled".into(),
            note: Some(note),
            action: "Scale".into(),
            secondary: None,
        };
        if let Err(e) = self.shared.recorder.publish(&ev, &object_ref).await {
            tracing::warn!(worker = %id, error = %e, "could not record the scale event");
        }
        Ok(())
    }
}

impl ScaleTarget for KubeTarget {
    async fn current_replicas(&self, id: &WorkerId) -> Result<i32, TargetError> {
        self.shared
            .with(id, |rt| rt.deployment_replicas)
            .ok_or_else(|| TargetError(format!("Worker {id} is not known (yet)")))
    }

    async fn scale(&self, id: &WorkerId, change: &ScaleChange) -> Result<(), TargetError> {
        // Boxed: rare, and its requests' futures would make every Worker's poll larger.
        Box::pin(self.patch_replicas(id, change)).await
    }

    async fn observed(&self, id: &WorkerId, outcome: &PollOutcome) {
        let queue = outcome
            .depth
            .as_ref()
            .map(|d| d.total())
            .map_err(Clone::clone);
        let Some((ns, name)) = self.shared.with(id, |rt| {
            rt.queue = Some(queue.clone());
            if queue.is_ok() {
                if let Some(c) = rt.redis.as_mut() {
                    c.read_while_failing = false;
                }
            }
            if outcome.decision.desired >= 0 {
                rt.desired = Some(outcome.decision.desired);
            }
            (rt.namespace.clone(), rt.name.clone())
        }) else {
            return;
        };
        let l = WorkerLabels::new(&ns, &name);
        let m = &self.shared.metrics;
        m.queue_reachable
            .get_or_create(&l)
            .set(i64::from(queue.is_ok()));
        if let Ok(d) = queue {
            m.queue_depth.get_or_create(&l).set(d);
        }
        if outcome.decision.desired >= 0 {
            m.desired_replicas
                .get_or_create(&l)
                .set(i64::from(outcome.decision.desired));
        }
        if let Err(e) = self.shared.write_status(id, outcome.scaled.is_some()).await {
            tracing::warn!(worker = %id, error = %e, "could not write the Worker status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At each poll the autoscaler has one `observed` (and now and then one `scale`) in flight
    /// per Worker, most of them parked on the status lock: with 1,000 Workers, every byte of
    /// these futures counts a thousand times. Their API requests are boxed while they run.
    #[tokio::test]
    async fn what_each_worker_keeps_in_flight_is_small() {
        use crate::autoscale::{Decision, PollOutcome, Reason, ScaleChange};
        use kube::runtime::events::Reporter;
        let (svc, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = Client::new(svc, "default");
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "test".into(),
                instance: None,
            },
        );
        let shared = Arc::new(Shared::new(client, recorder, Arc::default()));
        let target = KubeTarget { shared };
        let id: WorkerId = "prod/render".into();
        let outcome = PollOutcome {
            depth: Err(crate::autoscale::ProbeError::Unreachable("down".into())),
            current: 1,
            decision: Decision {
                desired: 1,
                recommendation: None,
                reason: Reason::ProbeFailedHold,
            },
            scaled: None,
            scale_error: None,
        };
        let change = ScaleChange {
            from: 1,
            to: 2,
            depth: Some(6),
            reason: Reason::ProbeFailedHold,
        };
        let observed = std::mem::size_of_val(&target.observed(&id, &outcome));
        let scale = std::mem::size_of_val(&target.scale(&id, &change));
        let status = std::mem::size_of_val(&target.shared.write_status(&id, false));
        // What the driver holds per Redis and per Worker during a poll, with this target.
        let entry = crate::autoscale::WorkerEntry {
            id: id.clone(),
            policy: crate::autoscale::Policy {
                min_replicas: 0,
                max_replicas: 10,
                jobs_per_replica: 5,
                activation_depth: 1,
                poll_interval: Duration::from_secs(5),
                scale_up_stabilization: Duration::ZERO,
                scale_down_stabilization: Duration::from_secs(300),
                max_scale_up_step: 0,
                on_queue_unavailable: crate::api::worker::OnQueueUnavailable::Hold,
            },
            probe: crate::autoscale::QueueProbe::from_parts(
                crate::api::worker::QueueType::Bullmq,
                "render",
                None,
                None,
            )
            .unwrap(),
            redis: crate::autoscale::RedisTarget::new("redis://redis:6379/0", None),
        };
        let driver = crate::autoscale::Driver::new(target.clone());
        let read = std::mem::size_of_val(&driver.read(&entry.redis, vec![&entry], 0));
        let act =
            std::mem::size_of_val(&driver.act(&entry, Ok(Default::default()), Instant::now()));
        eprintln!("observed {observed} B, scale {scale} B, write_status {status} B, read {read} B, act {act} B");
        // Before the boxing: observed 2,272, scale 4,288, write_status 2,080 bytes, and each
        // act larger than the largest of them.
        assert!(observed <= 1024, "observed: {observed} bytes");
        assert!(scale <= 512, "scale: {scale} bytes");
        assert!(status <= 1024, "write_status: {status} bytes");
        assert!(read <= 1024, "a read per Redis: {read} bytes");
        assert!(act <= 1536, "an act per Worker: {act} bytes");
    }

    fn runtime() -> Runtime {
        Runtime {
            namespace: "prod".into(),
            name: "render".into(),
            generation: Some(4),
            deployment_replicas: 3,
            observed_replicas: 3,
            available_replicas: 3,
            ready_at: 3,
            scaling: true,
            desired: Some(3),
            ..Runtime::default()
        }
    }

    fn cond<'a>(
        s: &'a WorkerStatus,
        t: &str,
    ) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        s.conditions.iter().find(|c| c.type_ == t)
    }

    #[test]
    fn status_from_runtime() {
        let now = Timestamp::now();
        let mut rt = runtime();
        rt.queue = Some(Ok(14));
        let s = rt.status(&WorkerStatus::default(), now);
        assert_eq!(s.queue_depth, Some(14));
        assert_eq!(s.selector.as_deref(), Some("berth.dev/worker=render"));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(cond(&s, "Ready").unwrap().status, "True");
        assert_eq!(cond(&s, "QueueReachable").unwrap().status, "True");

        rt.queue = Some(Err(ProbeError::Unreachable(
            "cannot connect to redis://:***@h:1".into(),
        )));
        let down = rt.status(&s, now);
        let q = cond(&down, "QueueReachable").unwrap();
        assert_eq!(
            (q.status.as_str(), q.reason.as_str()),
            ("False", "RedisUnreachable")
        );
        assert!(q.message.contains("held"));
        assert_eq!(down.queue_depth, None);
        assert_eq!(down.desired_replicas, Some(3));

        rt.available_replicas = 1;
        rt.desired = Some(5);
        let starting = rt.status(&down, now);
        assert_eq!(
            cond(&starting, "Ready").unwrap().reason,
            crate::status::reason::NOT_READY
        );
        // Scaled up from 3: the new replicas are starting, which is progress.
        assert_eq!(cond(&starting, "Progressing").unwrap().status, "True");
        assert_eq!(cond(&starting, "Degraded").unwrap().status, "False");
        assert!(differs_beyond_depth(&down, &starting));
    }
}
