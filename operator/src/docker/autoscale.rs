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
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use redis::{IntoConnectionInfo, Pipeline, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::api::{WorkerSpec, WorkerStatus};
use crate::autoscale::{
    Driver, Policy, PollOutcome, QueueProbe, RedisTarget, ScaleChange, ScaleTarget, TargetError,
    WorkerEntry, WorkerId,
};

use super::desired::{DesiredHost, Kind, ObjectKey};
use super::engine::Engine;
use super::labels;
use super::run::{HostHook, PassContext, ReplicaSource};
use super::state::StateDir;
use super::status;

/// How long one relayed round trip may take.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(5);

/// The relay run in the Redis container; the port is its only argument. Nothing secret.
const RELAY_SCRIPT: &str = "if command -v nc >/dev/null 2>&1; then exec nc 127.0.0.1 \"$1\"; \
elif command -v bash >/dev/null 2>&1; then exec bash -c 'exec 3<>/dev/tcp/127.0.0.1/'\"$1\"' && { cat <&3 & cat >&3; wait; }'; \
else echo 'no relay: the Redis image has neither nc nor bash' >&2; exit 127; fi";

/// The replica count a Worker with `scaling` starts from, before the driver's first decision:
/// what runs (clamped to the policy), else the spec's count.
pub fn initial_replicas(spec: &WorkerSpec, planned: i32, current: i32) -> i32 {
    match &spec.scaling {
        Some(s) if current > 0 => current.clamp(s.min_replicas, s.max_replicas.max(s.min_replicas)),
        _ => planned,
    }
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
            self.reachable_since = Some((ok, Time(k8s_openapi::jiff::Timestamp::now())));
        }
        self.unreachable = now;
    }
}

/// A stack's Redis, reached through `docker exec` in its container.
#[derive(Clone, Debug)]
struct Relay {
    group: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
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

    /// One round trip to a stack's Redis through `docker exec`.
    async fn exec_relay(&self, relay: &Relay, pipe: &Pipeline) -> Result<Vec<Value>, String> {
        let container = self
            .engine
            .containers()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|c| c.label(labels::GROUP) == Some(relay.group.as_str()) && c.state == "running")
            .map(|c| c.name)
            .ok_or_else(|| format!("the Redis container of {} is not running", relay.group))?;
        let (mut input, extra) = relay_input(relay, pipe);
        let docker = &self.engine.docker;
        let port = relay.port.to_string();
        let exec = docker
            .create_exec(
                &container,
                CreateExecOptions {
                    cmd: Some(vec![
                        "sh".to_string(),
                        "-c".to_string(),
                        RELAY_SCRIPT.to_string(),
                        "relay".to_string(),
                        port,
                    ]),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("docker exec in {container}: {e}"))?;
        let started = docker
            .start_exec(&exec.id, None::<bollard::exec::StartExecOptions>)
            .await
            .map_err(|e| format!("docker exec in {container}: {e}"))?;
        let StartExecResults::Attached {
            mut output,
            input: mut stdin,
        } = started
        else {
            return Err(format!("docker exec in {container} did not attach"));
        };
        let round_trip = async {
            stdin
                .write_all(&input)
                .await
                .map_err(|e| format!("writing to the relay in {container}: {e}"))?;
            stdin.flush().await.ok();
            let mut out = Vec::new();
            let mut err = Vec::new();
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(bollard::container::LogOutput::StdOut { message }) => {
                        out.extend_from_slice(&message)
                    }
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        err.extend_from_slice(&message)
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("reading the relay in {container}: {e}")),
                }
            }
            Ok((out, err))
        };
        let result = tokio::time::timeout(RELAY_TIMEOUT, round_trip).await;
        // The bytes held the password.
        input.fill(0);
        let (out, err) = result.map_err(|_| {
            format!("the relay in {container} did not answer within {RELAY_TIMEOUT:?}")
        })??;
        parse_replies(&out, pipe.len(), extra).map_err(|m| {
            let stderr = String::from_utf8_lossy(&err).trim().to_string();
            if stderr.is_empty() {
                format!("relay in {container}: {m}")
            } else {
                format!("relay in {container}: {stderr}")
            }
        })
    }
}

/// AUTH (and SELECT), the pipeline, QUIT: the bytes sent to the relay, and how many replies
/// come before the pipeline's.
fn relay_input(relay: &Relay, pipe: &Pipeline) -> (Vec<u8>, usize) {
    let mut bytes = Vec::new();
    let mut extra = 0;
    if let Some(pw) = &relay.password {
        let mut auth = redis::cmd("AUTH");
        if let Some(u) = &relay.username {
            auth.arg(u);
        }
        auth.arg(pw);
        bytes.extend(auth.get_packed_command());
        extra += 1;
    }
    if relay.db != 0 {
        bytes.extend(redis::cmd("SELECT").arg(relay.db).get_packed_command());
        extra += 1;
    }
    bytes.extend(pipe.get_packed_pipeline());
    bytes.extend(redis::cmd("QUIT").get_packed_command());
    (bytes, extra)
}

/// Splits the relay's output into the pipeline's `n` replies (after `extra` set-up replies,
/// which must be OK; QUIT's reply may be missing).
pub fn parse_replies(out: &[u8], n: usize, extra: usize) -> Result<Vec<Value>, String> {
    let mut parser = redis::Parser::new();
    let mut cursor = Cursor::new(out);
    for i in 0..extra {
        match parser.parse_value(&mut cursor) {
            Ok(Value::Okay) | Ok(Value::SimpleString(_)) => {}
            Ok(Value::ServerError(e)) => {
                let what = if i == 0 { "authentication" } else { "SELECT" };
                return Err(format!(
                    "{what} failed: {} (is REDIS_URL's password the one the Redis uses?)",
                    e.code()
                ));
            }
            Ok(other) => return Err(format!("unexpected reply to set-up: {other:?}")),
            Err(_) if out.is_empty() => return Err("no answer from Redis".into()),
            Err(e) => return Err(format!("unreadable reply: {}", e.kind_str())),
        }
    }
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        match parser.parse_value(&mut cursor) {
            Ok(v) => values.push(v),
            Err(e) => {
                return Err(format!(
                    "{} of {n} replies, then: {}",
                    values.len(),
                    e.kind_str()
                ))
            }
        }
    }
    Ok(values)
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
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
    let (ok, reason, message) = match &s.unreachable {
        None => (
            true,
            "QueueRead".to_string(),
            "the queue is read every pollInterval".to_string(),
        ),
        Some((r, m)) => (
            false,
            r.clone(),
            format!("{m}; replicas are held until it can be read"),
        ),
    };
    let status = if ok { "True" } else { "False" };
    let generation = st.observed_generation;
    let previous = st
        .conditions
        .iter()
        .find(|c| c.type_ == "QueueReachable" && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .or_else(|| {
            s.reachable_since
                .as_ref()
                .filter(|r| r.0 == ok)
                .map(|r| r.1.clone())
        });
    st.conditions.retain(|c| c.type_ != "QueueReachable");
    st.conditions.push(Condition {
        type_: "QueueReachable".into(),
        status: status.into(),
        reason,
        message,
        last_transition_time: previous.unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
        observed_generation: generation,
    });
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
            s.last_scale_time = Some(Time(k8s_openapi::jiff::Timestamp::now()));
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

/// A relay when the URL's host is a group of the host (a stack's own Redis).
fn in_stack_relay(url: &str, groups: &HashSet<&str>) -> Option<Relay> {
    let info = url.into_connection_info().ok()?;
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        _ => return None,
    };
    if !groups.contains(host.as_str()) {
        return None;
    }
    let r = info.redis_settings();
    Some(Relay {
        group: host,
        port,
        username: r.username().map(str::to_string),
        password: r.password().map(str::to_string),
        db: r.db(),
    })
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
                let n = initial_replicas(spec, planned, current);
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
        assert_eq!(initial_replicas(&spec(0, 3), 0, 0), 0);
        assert_eq!(initial_replicas(&spec(1, 3), 1, 2), 2);
        assert_eq!(initial_replicas(&spec(1, 3), 1, 7), 3);
        let mut fixed = spec(1, 3);
        fixed.scaling = None;
        assert_eq!(initial_replicas(&fixed, 2, 5), 2);
    }

    #[test]
    fn stack_redis_is_relayed_and_others_are_not() {
        let groups: HashSet<&str> = ["s-redis", "s-api"].into();
        let r = in_stack_relay("redis://default:pw%40x@s-redis:6379/2", &groups).unwrap();
        assert_eq!(r.group, "s-redis");
        assert_eq!(r.port, 6379);
        assert_eq!(r.username.as_deref(), Some("default"));
        assert_eq!(r.password.as_deref(), Some("pw@x"));
        assert_eq!(r.db, 2);
        assert!(in_stack_relay("redis://:pw@cache.example.com:6379/0", &groups).is_none());
        assert!(in_stack_relay("rediss://:pw@s-redis:6380/0", &groups).is_none());
    }

    #[test]
    fn relay_input_sends_auth_on_stdin_and_ends_with_quit() {
        let relay = Relay {
            group: "s-redis".into(),
            port: 6379,
            username: Some("default".into()),
            password: Some("hunter2".into()),
            db: 0,
        };
        let mut pipe = Pipeline::new();
        pipe.cmd("LLEN").arg("jobs");
        let (bytes, extra) = relay_input(&relay, &pipe);
        assert_eq!(extra, 1);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("*3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$7\r\nhunter2\r\n"));
        assert!(text.contains("LLEN"));
        assert!(text.ends_with("*1\r\n$4\r\nQUIT\r\n"));
        // The command line carries the port only.
        assert!(!RELAY_SCRIPT.contains("hunter2"));
    }

    #[test]
    fn replies_are_split_after_auth() {
        let out = b"+OK\r\n:7\r\n-WRONGTYPE bad\r\n+OK\r\n";
        let v = parse_replies(out, 2, 1).unwrap();
        assert_eq!(v[0], Value::Int(7));
        assert!(matches!(v[1], Value::ServerError(_)));
        let e = parse_replies(b"-WRONGPASS invalid username-password pair\r\n", 1, 1).unwrap_err();
        assert!(e.starts_with("authentication failed: WRONGPASS"), "{e}");
        assert_eq!(
            parse_replies(b"", 1, 1).unwrap_err(),
            "no answer from Redis"
        );
        assert!(parse_replies(b":1\r\n", 2, 0)
            .unwrap_err()
            .starts_with("1 of 2"));
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
