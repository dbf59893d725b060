//! The polling loop: every Worker is read at its own `pollInterval`; Workers due at the same
//! tick on the same Redis share one pipelined round trip; each result goes through the pure
//! decision and, when the replica count should change, to the backend's [`ScaleTarget`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use redis::{Pipeline, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::decision::{step, Decision, History, Observation, Policy, Reason};
use super::listener::Listener;
use super::pool::{Pool, RedisTarget};
use super::probe::{Depth, ProbeError, QueueProbe};

/// How a backend names a Worker (`namespace/name` on Kubernetes, the name on a Docker host).
pub type WorkerId = String;

/// Everything the driver needs to scale one Worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerEntry {
    pub id: WorkerId,
    pub policy: Policy,
    pub probe: QueueProbe,
    pub redis: RedisTarget,
}

/// A backend failure, as text a person can act on (no secrets).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TargetError(pub String);

/// One scaling step, handed to [`ScaleTarget::scale`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleChange {
    pub from: i32,
    pub to: i32,
    /// The depth that led to it (`None` when the queue could not be read).
    pub depth: Option<i64>,
    pub reason: Reason,
}

/// What one poll of one Worker found and did.
#[derive(Clone, Debug)]
pub struct PollOutcome {
    pub depth: Result<Depth, ProbeError>,
    pub current: i32,
    pub decision: Decision,
    /// The change applied, if any.
    pub scaled: Option<ScaleChange>,
    /// Set when the change could not be applied.
    pub scale_error: Option<TargetError>,
}

/// What a backend implements: how many replicas run, how to change that, and where to report
/// what was measured (status, events, metrics).
pub trait ScaleTarget: Send + Sync + 'static {
    /// Replicas the Worker has now (as last set; the desired count of its workload).
    fn current_replicas(
        &self,
        id: &WorkerId,
    ) -> impl Future<Output = Result<i32, TargetError>> + Send;
    /// Sets the replica count.
    fn scale(
        &self,
        id: &WorkerId,
        change: &ScaleChange,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;
    /// Called after every poll of the Worker, whether or not it scaled.
    fn observed(&self, id: &WorkerId, outcome: &PollOutcome) -> impl Future<Output = ()> + Send;
    /// Sends one probe pipeline when the backend has its own way to `redis` (the Docker host
    /// relays to a stack's Redis through `docker exec`); `None` sends it through the shared
    /// connection pool. Errors are messages without secrets.
    fn relay(
        &self,
        _redis: &RedisTarget,
        _pipe: &Pipeline,
    ) -> impl Future<Output = Option<Result<Vec<Value>, String>>> + Send {
        async { None }
    }
    /// Whether berth can open its own connection to `redis` for keyspace notifications
    /// (false where probes go through [`ScaleTarget::relay`]).
    fn subscribable(&self, _redis: &RedisTarget) -> bool {
        true
    }
}

pub(super) struct State {
    pub(super) entry: WorkerEntry,
    history: History,
    pub(super) next_due: Instant,
    /// When it was last read (wake-ups keep a gap to it).
    pub(super) last_poll: Option<Instant>,
}

pub(super) struct Inner<T> {
    pub(super) target: T,
    pub(super) pool: Pool,
    /// Boxed: a hash table keeps room for up to twice its entries, each a `State` inline.
    pub(super) workers: Mutex<HashMap<WorkerId, Box<State>>>,
    pub(super) changed: Notify,
    /// Keyspace notifications on (see [`super::notify`]).
    pub(super) keyspace: AtomicBool,
    /// The Workers' keys or Redis servers changed since the subscriptions were last synced.
    pub(super) keys_changed: AtomicBool,
    pub(super) listeners: Mutex<HashMap<RedisTarget, Listener>>,
    pub(super) wakeups: AtomicU64,
}

/// The autoscaler of a set of Workers. Cheap to clone; `run` it once.
pub struct Driver<T> {
    pub(super) inner: Arc<Inner<T>>,
}

impl<T> Clone for Driver<T> {
    fn clone(&self) -> Self {
        Driver {
            inner: self.inner.clone(),
        }
    }
}

impl<T: ScaleTarget> Driver<T> {
    pub fn new(target: T) -> Driver<T> {
        Driver {
            inner: Arc::new(Inner {
                target,
                pool: Pool::new(),
                workers: Mutex::new(HashMap::new()),
                changed: Notify::new(),
                keyspace: AtomicBool::new(false),
                keys_changed: AtomicBool::new(true),
                listeners: Mutex::new(HashMap::new()),
                wakeups: AtomicU64::new(0),
            }),
        }
    }

    /// Turns keyspace-notification wake-ups on or off (off by default; see
    /// [`super::notify`]). Takes effect in `run`.
    pub fn set_keyspace_notifications(&self, on: bool) {
        self.inner.keyspace.store(on, Ordering::Relaxed);
        self.inner.keys_changed.store(true, Ordering::Release);
        if !on {
            self.inner
                .listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        self.inner.changed.notify_one();
    }

    /// Re-syncs the keyspace subscriptions at the next turn of `run` (for a backend whose
    /// [`ScaleTarget::subscribable`] answer changed).
    pub fn refresh_keyspace(&self) {
        self.inner.keys_changed.store(true, Ordering::Release);
        self.inner.changed.notify_one();
    }

    /// The backend this driver scales.
    pub fn target(&self) -> &T {
        &self.inner.target
    }

    /// The connection pool (one connection per Redis).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub(super) fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, Box<State>>> {
        self.inner.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a Worker or updates it. A Worker that changed is polled at once; its history of
    /// recommendations is kept (a spec edit does not reset the down window).
    pub fn upsert(&self, entry: WorkerEntry) {
        let now = Instant::now();
        let mut workers = self.workers();
        match workers.get_mut(&entry.id) {
            Some(s) if s.entry == entry => return,
            Some(s) => {
                let moved = s.entry.redis != entry.redis;
                if moved || s.entry.probe != entry.probe {
                    self.inner.keys_changed.store(true, Ordering::Release);
                }
                s.entry = entry;
                s.next_due = now;
                if moved {
                    let used: Vec<RedisTarget> =
                        workers.values().map(|s| s.entry.redis.clone()).collect();
                    self.inner.pool.retain(&used);
                }
            }
            None => {
                workers.insert(
                    entry.id.clone(),
                    Box::new(State {
                        entry,
                        history: History::default(),
                        next_due: now,
                        last_poll: None,
                    }),
                );
                self.inner.keys_changed.store(true, Ordering::Release);
            }
        }
        drop(workers);
        self.inner.changed.notify_one();
    }

    /// Stops scaling a Worker (deleted, or its `scaling` removed).
    pub fn remove(&self, id: &str) {
        let mut workers = self.workers();
        if workers.remove(id).is_some() {
            self.inner.keys_changed.store(true, Ordering::Release);
            let used: Vec<RedisTarget> = workers.values().map(|s| s.entry.redis.clone()).collect();
            drop(workers);
            self.inner.pool.retain(&used);
        }
    }

    /// Whether a Worker is being scaled.
    pub fn contains(&self, id: &str) -> bool {
        self.workers().contains_key(id)
    }

    /// The Workers being scaled.
    pub fn ids(&self) -> Vec<WorkerId> {
        self.workers().keys().cloned().collect()
    }

    /// Number of Workers being scaled.
    pub fn len(&self) -> usize {
        self.workers().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Polls every Worker due at `now` (all of them with `force`), decides and scales. Returns
    /// what happened per Worker. `run` calls this; tests and benchmarks may call it directly.
    pub async fn poll_due(&self, now: Instant, force: bool) -> Vec<(WorkerId, PollOutcome)> {
        let due: Vec<WorkerEntry> = {
            let mut workers = self.workers();
            workers
                .values_mut()
                .filter(|s| force || s.next_due <= now)
                .map(|s| {
                    s.next_due = now + s.entry.policy.poll_interval;
                    s.last_poll = Some(now);
                    s.entry.clone()
                })
                .collect()
        };
        if due.is_empty() {
            return Vec::new();
        }
        let mut by_redis: HashMap<&RedisTarget, Vec<&WorkerEntry>> = HashMap::new();
        for e in &due {
            by_redis.entry(&e.redis).or_default().push(e);
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // One read per Redis and then one act per Worker, all at once: each of these futures
        // is in memory a thousand times at 1,000 stacks, so their large and rare steps
        // (dials, API requests) are boxed where they run.
        let reads = by_redis
            .into_iter()
            .map(|(redis, entries)| self.read(redis, entries, now_ms));
        let measured: Vec<(&WorkerEntry, Result<Depth, ProbeError>)> =
            join_all(reads).await.into_iter().flatten().collect();
        let acts = measured.into_iter().map(|(entry, depth)| async move {
            (entry.id.clone(), self.act(entry, depth, now).await)
        });
        join_all(acts).await
    }

    /// Reads the queues of `entries`, all on `redis`, in one round trip.
    pub(crate) async fn read<'a>(
        &self,
        redis: &RedisTarget,
        entries: Vec<&'a WorkerEntry>,
        now_ms: u64,
    ) -> Vec<(&'a WorkerEntry, Result<Depth, ProbeError>)> {
        let probes: Vec<&QueueProbe> = entries.iter().map(|e| &e.probe).collect();
        let pipe = probe_pipeline(&probes, now_ms);
        let values = match self.inner.target.relay(redis, &pipe).await {
            Some(v) => v,
            None => self
                .inner
                .pool
                .get(redis)
                .query(&pipe)
                .await
                .map_err(|e| e.to_string()),
        };
        let depths = split_replies(redis, &probes, &pipe, values);
        entries.into_iter().zip(depths).collect()
    }

    /// Decides for one Worker from what was read, scales it when the decision says so, and
    /// reports the outcome to the backend.
    pub(crate) async fn act(
        &self,
        entry: &WorkerEntry,
        depth: Result<Depth, ProbeError>,
        now: Instant,
    ) -> PollOutcome {
        let target = &self.inner.target;
        let obs = match &depth {
            Ok(d) => Observation::Depth(d.total()),
            Err(_) => Observation::Unavailable,
        };
        let current = match target.current_replicas(&entry.id).await {
            Ok(n) => n,
            Err(e) => {
                // Without the current count nothing can be decided safely: report and hold.
                let outcome = PollOutcome {
                    depth,
                    current: -1,
                    decision: Decision {
                        desired: -1,
                        recommendation: None,
                        reason: Reason::ProbeFailedHold,
                    },
                    scaled: None,
                    scale_error: Some(e),
                };
                target.observed(&entry.id, &outcome).await;
                return outcome;
            }
        };
        let decision = {
            let mut workers = self.workers();
            match workers.get_mut(&entry.id) {
                Some(s) => step(obs, current, &entry.policy, &mut s.history, now),
                // Removed meanwhile: decide nothing.
                None => {
                    super::decision::decide(obs, current, &entry.policy, &History::default(), now)
                }
            }
        };
        let mut outcome = PollOutcome {
            depth,
            current,
            decision,
            scaled: None,
            scale_error: None,
        };
        if decision.desired != current && self.contains(&entry.id) {
            let change = ScaleChange {
                from: current,
                to: decision.desired,
                depth: outcome.depth.as_ref().ok().map(Depth::total),
                reason: decision.reason,
            };
            match target.scale(&entry.id, &change).await {
                Ok(()) => {
                    tracing::info!(worker = %entry.id, from = change.from, to = change.to, depth = ?change.depth, reason = %change.reason, "scaled");
                    outcome.scaled = Some(change);
                }
                Err(e) => {
                    tracing::warn!(worker = %entry.id, error = %e, "scaling failed");
                    outcome.scale_error = Some(e);
                }
            }
        }
        target.observed(&entry.id, &outcome).await;
        outcome
    }

    /// Polls until `shutdown`: sleeps until the next Worker is due (or one is added, or a
    /// keyspace notification makes one due).
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            self.sync_listeners(&shutdown);
            let now = Instant::now();
            self.poll_due(now, false).await;
            let next = self
                .workers()
                .values()
                .map(|s| s.next_due)
                .min()
                .unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.inner.listeners.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    return;
                }
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = self.inner.changed.notified() => {}
            }
        }
    }
}

/// Reads the depths of Workers on one Redis in one pipelined round trip.
pub async fn read_depths(
    pool: &Pool,
    redis: &RedisTarget,
    probes: &[&WorkerEntry],
    now_ms: u64,
) -> Vec<Result<Depth, ProbeError>> {
    let list: Vec<&QueueProbe> = probes.iter().map(|e| &e.probe).collect();
    read_probes(pool, redis, &list, now_ms).await
}

/// Like [`read_depths`], for bare probes (`berth queue depth`).
pub async fn read_probes(
    pool: &Pool,
    redis: &RedisTarget,
    probes: &[&QueueProbe],
    now_ms: u64,
) -> Vec<Result<Depth, ProbeError>> {
    let pipe = probe_pipeline(probes, now_ms);
    let values = pool
        .get(redis)
        .query(&pipe)
        .await
        .map_err(|e| e.to_string());
    split_replies(redis, probes, &pipe, values)
}

/// The commands of `probes`, in order, as one pipeline (a failed command's reply is a value).
pub fn probe_pipeline(probes: &[&QueueProbe], now_ms: u64) -> Pipeline {
    let mut pipe = Pipeline::new();
    pipe.ignore_errors();
    for p in probes {
        p.add_commands(&mut pipe, now_ms);
    }
    pipe
}

/// Hands each probe its replies; a failed round trip fails every probe of it.
pub fn split_replies(
    redis: &RedisTarget,
    probes: &[&QueueProbe],
    pipe: &Pipeline,
    values: Result<Vec<Value>, String>,
) -> Vec<Result<Depth, ProbeError>> {
    match values {
        Ok(values) => {
            let mut out = Vec::with_capacity(probes.len());
            let mut at = 0;
            for p in probes {
                let n = p.command_count();
                out.push(match values.get(at..at + n) {
                    Some(replies) => p.parse(replies),
                    None => Err(ProbeError::Unreachable(format!(
                        "{} sent {} replies for {} commands",
                        redis.redacted(),
                        values.len(),
                        pipe.len()
                    ))),
                });
                at += n;
            }
            out
        }
        Err(e) => probes
            .iter()
            .map(|_| Err(ProbeError::Unreachable(e.clone())))
            .collect(),
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
