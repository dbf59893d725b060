//! Keyspace-notification wake-ups of the autoscaler against a real redis-server: a write to a
//! queue wakes its Worker long before its pollInterval; where CONFIG is refused the driver
//! falls back to polling; polling still scales when notifications are lost.

#[path = "support/redis.rs"]
mod redis_support;

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use berth::api::worker::{OnQueueUnavailable, QueueType};
use berth::autoscale::{
    Driver, KeyspaceState, Policy, PollOutcome, QueueProbe, RedisTarget, ScaleChange, ScaleTarget,
    TargetError, WorkerEntry, WorkerId,
};
use redis::AsyncCommands;
use redis_support::{Options, RedisServer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Recorder {
    replicas: AtomicI32,
    scaled: mpsc::UnboundedSender<i32>,
}

impl ScaleTarget for Recorder {
    async fn current_replicas(&self, _: &WorkerId) -> Result<i32, TargetError> {
        Ok(self.replicas.load(Ordering::SeqCst))
    }
    async fn scale(&self, _: &WorkerId, c: &ScaleChange) -> Result<(), TargetError> {
        self.replicas.store(c.to, Ordering::SeqCst);
        let _ = self.scaled.send(c.to);
        Ok(())
    }
    async fn observed(&self, _: &WorkerId, _: &PollOutcome) {}
}

fn policy(poll: Duration) -> Policy {
    Policy {
        min_replicas: 0,
        max_replicas: 10,
        jobs_per_replica: 5,
        activation_depth: 1,
        poll_interval: poll,
        scale_up_stabilization: Duration::ZERO,
        scale_down_stabilization: Duration::from_secs(300),
        max_scale_up_step: 0,
        on_queue_unavailable: OnQueueUnavailable::Hold,
    }
}

struct Running {
    driver: Driver<Recorder>,
    scaled: mpsc::UnboundedReceiver<i32>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A driver with keyspace notifications on, scaling one BullMQ Worker `render` on `url`.
fn start(url: String, poll: Duration) -> Running {
    let (tx, scaled) = mpsc::unbounded_channel();
    let driver = Driver::new(Recorder {
        replicas: AtomicI32::new(0),
        scaled: tx,
    });
    driver.set_keyspace_notifications(true);
    driver.upsert(WorkerEntry {
        id: "test/render".into(),
        policy: policy(poll),
        probe: QueueProbe::from_parts(QueueType::Bullmq, "render", None, None).unwrap(),
        redis: RedisTarget::new(url, None),
    });
    let token = CancellationToken::new();
    let (d, t) = (driver.clone(), token.clone());
    let task = tokio::spawn(async move { d.run(t).await });
    Running {
        driver,
        scaled,
        token,
        task,
    }
}

impl Running {
    /// Waits until the one Redis's notification state matches `want`.
    async fn state(&self, want: impl Fn(&KeyspaceState) -> bool) -> KeyspaceState {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let states = self.driver.keyspace();
            if let Some((_, s)) = states.first() {
                if want(s) {
                    return s.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "keyspace state not reached within 10s: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The next scale request within `within`, with the time it took.
    async fn scaled_within(&mut self, within: Duration) -> (i32, Duration) {
        let from = Instant::now();
        let to = tokio::time::timeout(within, self.scaled.recv())
            .await
            .unwrap_or_else(|_| panic!("no scale request within {within:?}"))
            .unwrap();
        (to, from.elapsed())
    }

    async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap();
    }
}

async fn push_jobs(server: &RedisServer, n: usize) {
    let mut c = server.conn().await;
    let jobs: Vec<String> = (0..n).map(|i| format!("job-{i}")).collect();
    let _: () = c.lpush("bull:render:wait", &jobs).await.unwrap();
}

#[tokio::test]
async fn a_write_to_the_queue_wakes_the_worker_before_its_poll() {
    let server = RedisServer::start_plain();
    // A 60 s pollInterval: only a notification can scale within seconds.
    let mut run = start(server.url(), Duration::from_secs(60));
    run.state(|s| *s == KeyspaceState::Subscribed).await;
    let mut c = server.conn().await;
    let flags: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut c)
        .await
        .unwrap();
    for flag in ['K', 'g', 'l', 'z', 't'] {
        assert!(flags[1].contains(flag), "notify-keyspace-events {flags:?}");
    }
    // The first poll (empty queue) happened when the Worker was added; let it pass the gap.
    tokio::time::sleep(Duration::from_millis(100)).await;
    push_jobs(&server, 5).await;
    let (to, took) = run.scaled_within(Duration::from_secs(5)).await;
    assert_eq!(to, 1);
    assert!(run.driver.wakeups() >= 1, "woken by a notification");
    eprintln!("scaled {took:?} after the write (pollInterval 60s)");
    // A second queue key of the same probe (BullMQ's prioritized set) wakes it too.
    let _: () = c.zadd("bull:render:prioritized", "p1", 1).await.unwrap();
    let (to, _) = run.scaled_within(Duration::from_secs(5)).await;
    assert_eq!(to, 2);
    run.stop().await;
}

#[tokio::test]
async fn refused_config_falls_back_to_polling() {
    let server = RedisServer::start_with(Options {
        password: Some("s3cret-pw".into()),
        args: vec!["--rename-command".into(), "CONFIG".into(), "".into()],
        ..Default::default()
    });
    let mut run = start(server.url(), Duration::from_millis(500));
    let state = run.state(|s| matches!(s, KeyspaceState::Polling(_))).await;
    let KeyspaceState::Polling(reason) = state else {
        unreachable!()
    };
    assert!(reason.contains("notify-keyspace-events"), "{reason}");
    assert!(!reason.contains("s3cret-pw"), "no password in {reason}");
    push_jobs(&server, 5).await;
    let (to, took) = run.scaled_within(Duration::from_secs(5)).await;
    assert_eq!(to, 1);
    assert_eq!(run.driver.wakeups(), 0, "scaled by polling");
    eprintln!("polling only: scaled {took:?} after the write (pollInterval 500ms)");
    run.stop().await;
}

#[tokio::test]
async fn polling_still_scales_when_notifications_are_lost() {
    let server = RedisServer::start_plain();
    let mut run = start(server.url(), Duration::from_secs(1));
    run.state(|s| *s == KeyspaceState::Subscribed).await;
    // Someone turns notifications off behind berth's back: nothing is published any more.
    let mut c = server.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("")
        .query_async(&mut c)
        .await
        .unwrap();
    let before = run.driver.wakeups();
    push_jobs(&server, 5).await;
    let (to, took) = run.scaled_within(Duration::from_secs(5)).await;
    assert_eq!(to, 1);
    assert_eq!(run.driver.wakeups(), before, "no notification arrived");
    assert!(
        took <= Duration::from_millis(1500),
        "within the pollInterval: {took:?}"
    );
    run.stop().await;
}
