//! Autoscaler figures against a real redis-server (`make bench-autoscale`):
//! 1. reaction time from a depth change to the scale request, pollInterval 1s, TRIALS (100)
//!    trials: polling only, then with keyspace notifications (`--redis-keyspace-notifications`);
//! 2. one poll cycle of 1,000 Workers on one Redis: wall time and round trips.

#[path = "../../tests/support/redis.rs"]
mod redis_support;

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use berth::api::worker::{OnQueueUnavailable, QueueType};
use berth::autoscale::{
    Driver, KeyspaceState, Policy, PollOutcome, QueueProbe, RedisTarget, ScaleChange, ScaleTarget,
    TargetError, WorkerEntry, WorkerId,
};
use redis::AsyncCommands;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Records when each scale request arrives.
struct Recorder {
    replicas: AtomicI32,
    scaled: mpsc::UnboundedSender<(i32, Instant)>,
}

impl ScaleTarget for Recorder {
    async fn current_replicas(&self, _: &WorkerId) -> Result<i32, TargetError> {
        Ok(self.replicas.load(Ordering::SeqCst))
    }
    async fn scale(&self, _: &WorkerId, c: &ScaleChange) -> Result<(), TargetError> {
        self.replicas.store(c.to, Ordering::SeqCst);
        let _ = self.scaled.send((c.to, Instant::now()));
        Ok(())
    }
    async fn observed(&self, _: &WorkerId, _: &PollOutcome) {}
}

/// Holds replicas where the depth puts them: nothing to scale, only reads measured.
struct Static;

impl ScaleTarget for Static {
    async fn current_replicas(&self, _: &WorkerId) -> Result<i32, TargetError> {
        Ok(0)
    }
    async fn scale(&self, _: &WorkerId, _: &ScaleChange) -> Result<(), TargetError> {
        Ok(())
    }
    async fn observed(&self, _: &WorkerId, _: &PollOutcome) {}
}

/// The defaults of API.md, except maxReplicas.
fn default_policy() -> Policy {
    Policy {
        min_replicas: 0,
        max_replicas: 1000,
        jobs_per_replica: 5,
        activation_depth: 1,
        poll_interval: Duration::from_secs(1),
        scale_up_stabilization: Duration::ZERO,
        scale_down_stabilization: Duration::from_secs(300),
        max_scale_up_step: 0,
        on_queue_unavailable: OnQueueUnavailable::Hold,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn reaction(server: &redis_support::RedisServer, trials: usize, keyspace: bool) -> Duration {
    // An empty queue for every run (the previous one left its jobs).
    let mut c = server.conn().await;
    let _: () = c.del("bull:render:wait").await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = Driver::new(Recorder {
        replicas: AtomicI32::new(0),
        scaled: tx,
    });
    driver.upsert(WorkerEntry {
        id: "bench/render".into(),
        policy: default_policy(),
        probe: QueueProbe::from_parts(QueueType::Bullmq, "render", None, None).unwrap(),
        redis: RedisTarget::new(server.url(), None),
    });
    driver.set_keyspace_notifications(keyspace);
    let token = CancellationToken::new();
    let d = driver.clone();
    let t = token.clone();
    let running = tokio::spawn(async move { d.run(t).await });
    if keyspace {
        let deadline = Instant::now() + Duration::from_secs(10);
        while driver.keyspace().first().map(|(_, s)| s) != Some(&KeyspaceState::Subscribed) {
            assert!(
                Instant::now() < deadline,
                "not subscribed: {:?}",
                driver.keyspace()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut latencies = Vec::with_capacity(trials);
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15;
    for trial in 1..=trials {
        // A random phase against the poll cycle, as real jobs arrive.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        tokio::time::sleep(Duration::from_millis(rng_state % 1000)).await;
        // Five more jobs per trial: one more replica each time.
        let jobs: Vec<String> = (0..5).map(|i| format!("{trial}-{i}")).collect();
        let _: () = c.lpush("bull:render:wait", &jobs).await.unwrap();
        let pushed = Instant::now();
        loop {
            let (to, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a scale request within 10s")
                .unwrap();
            if to == trial as i32 {
                latencies.push(at.saturating_duration_since(pushed));
                break;
            }
        }
    }
    token.cancel();
    running.await.unwrap();
    latencies.sort();
    let p99 = percentile(&latencies, 0.99);
    println!(
        "reaction time, depth change -> scale request ({}, pollInterval 1s, {trials} trials): p50 {}  p99 {}  max {}  (wake-ups by notification: {})",
        if keyspace { "keyspace notifications" } else { "polling only" },
        ms(percentile(&latencies, 0.5)),
        ms(p99),
        ms(*latencies.last().unwrap()),
        driver.wakeups()
    );
    p99
}

async fn thousand_workers(server: &redis_support::RedisServer, workers: usize, cycles: usize) {
    let driver = Driver::new(Static);
    let target = RedisTarget::new(server.url(), None);
    let types = [
        QueueType::List,
        QueueType::Bullmq,
        QueueType::Celery,
        QueueType::Sidekiq,
        QueueType::Rq,
    ];
    let mut c = server.conn().await;
    let mut commands = 0;
    for i in 0..workers {
        let t = types[i % types.len()];
        let probe = QueueProbe::from_parts(t, &format!("q{i}"), None, None).unwrap();
        commands += probe.command_count();
        driver.upsert(WorkerEntry {
            id: format!("bench/w{i}"),
            policy: default_policy(),
            probe,
            redis: target.clone(),
        });
        let _: () = c.lpush(format!("queue:q{i}"), i).await.unwrap();
    }
    let conn = driver.pool().get(&target);
    // Warm up the connection.
    driver.poll_due(Instant::now(), true).await;
    let before = conn.round_trips();
    let mut times = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        let start = Instant::now();
        let outcomes = driver.poll_due(Instant::now(), true).await;
        times.push(start.elapsed());
        assert_eq!(outcomes.len(), workers);
        assert!(outcomes.iter().all(|(_, o)| o.depth.is_ok()));
    }
    let trips = conn.round_trips() - before;
    times.sort();
    println!(
        "one poll cycle of {workers} Workers on one Redis ({commands} commands, {cycles} cycles): p50 {}  p99 {}  round trips per cycle {}  connections {}",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        trips as f64 / cycles as f64,
        driver.pool().len()
    );
}

fn main() {
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = redis_support::RedisServer::start_plain();
    runtime.block_on(async {
        thousand_workers(&server, 1000, 50).await;
        let polling = reaction(&server, trials, false).await;
        let notified = reaction(&server, trials, true).await;
        println!(
            "p99 keyspace notifications vs polling: {} vs {}  ratio {:.3}  (goal <= 150 ms with notifications, <= 1 s without)",
            ms(notified),
            ms(polling),
            notified.as_secs_f64() / polling.as_secs_f64()
        );
    });
}
