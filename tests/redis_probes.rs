//! Queue probes against a real redis-server, with keys written exactly as each framework
//! writes them (BullMQ 5, Celery/kombu 5, Sidekiq 7, RQ 2, Redis streams).

#[path = "support/redis.rs"]
mod redis_support;

use berth::api::worker::QueueType;
use berth::autoscale::{read_probes, Depth, Pool, ProbeError, QueueProbe, RedisTarget};
use redis::AsyncCommands;
use redis_support::{Options, RedisServer};

async fn depth(server: &RedisServer, probe: &QueueProbe) -> Result<Depth, ProbeError> {
    let pool = Pool::new();
    let target = RedisTarget::new(server.url(), server.ca_pem());
    let now = berth::autoscale::driver::now_ms();
    read_probes(&pool, &target, &[probe], now).await.remove(0)
}

fn probe(t: QueueType, name: &str) -> QueueProbe {
    QueueProbe::from_parts(t, name, None, None).unwrap()
}

fn part(d: &Depth, what: &str) -> i64 {
    d.parts
        .iter()
        .find(|p| p.what == what)
        .unwrap_or_else(|| panic!("no part {what} in {d:?}"))
        .count
}

/// What `Queue.add` leaves behind in BullMQ 5: the job hash, the id counter, the event stream
/// and the id in `wait`, `prioritized` (score priority << 32 + counter) or `delayed`
/// (score timestamp_ms * 0x1000 + counter & 0xfff).
async fn bullmq_add(
    c: &mut redis::aio::MultiplexedConnection,
    q: &str,
    id: u64,
    state: &str,
    score: Option<f64>,
) {
    let prefix = format!("bull:{q}");
    let _: () = redis::pipe()
        .incr(format!("{prefix}:id"), 1)
        .hset_multiple(
            format!("{prefix}:{id}"),
            &[
                ("name", "render"),
                ("data", "{}"),
                ("opts", "{}"),
                ("timestamp", "0"),
            ],
        )
        .cmd("XADD")
        .arg(format!("{prefix}:events"))
        .arg("*")
        .arg("event")
        .arg("added")
        .arg("jobId")
        .arg(id)
        .query_async(c)
        .await
        .unwrap();
    match (state, score) {
        ("wait", _) | ("active", _) => {
            let _: () = c.lpush(format!("{prefix}:{state}"), id).await.unwrap();
        }
        (set, Some(s)) => {
            let _: () = c.zadd(format!("{prefix}:{set}"), id, s).await.unwrap();
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn bullmq_counts_wait_prioritized_due_delayed_and_active() {
    let server = RedisServer::start_plain();
    let mut c = server.conn().await;
    let now = berth::autoscale::driver::now_ms();
    for id in 1..=3 {
        bullmq_add(&mut c, "video", id, "wait", None).await;
    }
    // Priority 5: score = 5 * 2^32 + counter.
    for id in 4..=5 {
        bullmq_add(
            &mut c,
            "video",
            id,
            "prioritized",
            Some((5u64 << 32) as f64 + id as f64),
        )
        .await;
    }
    // Delayed: two due (a minute ago, one ms ago), one due in an hour.
    for (id, at) in [(6, now - 60_000), (7, now - 1), (8, now + 3_600_000)] {
        let score = (at * 0x1000 + (id & 0xfff)) as f64;
        bullmq_add(&mut c, "video", id, "delayed", Some(score)).await;
    }
    bullmq_add(&mut c, "video", 9, "active", None).await;
    // Another queue on the same Redis is not counted.
    bullmq_add(&mut c, "other", 1, "wait", None).await;

    let d = depth(&server, &probe(QueueType::Bullmq, "video"))
        .await
        .unwrap();
    assert_eq!(part(&d, "wait"), 3);
    assert_eq!(part(&d, "prioritized"), 2);
    assert_eq!(part(&d, "delayed (due)"), 2, "the job due in an hour waits");
    assert_eq!(part(&d, "active"), 1);
    assert_eq!((d.waiting(), d.in_flight(), d.total()), (7, 1, 8));

    // A custom prefix through `key`.
    let _: () = c.lpush("myapp:video:wait", "1").await.unwrap();
    let custom =
        QueueProbe::from_parts(QueueType::Bullmq, "video", Some("myapp:video"), None).unwrap();
    assert_eq!(depth(&server, &custom).await.unwrap().total(), 1);
}

#[tokio::test]
async fn celery_counts_every_priority_list() {
    let server = RedisServer::start_plain();
    let mut c = server.conn().await;
    // kombu's Channel._put: LPUSH to _q_for_pri(queue, pri) = queue + "\x06\x16" + pri for
    // pri > 0; the bindings set `_kombu.binding.<exchange>` as kombu declares it.
    let message = r#"{"body": "W1tdLCB7fSwgeyJjYWxsYmFja3MiOiBudWxsfV0=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "app.render", "id": "x"}, "properties": {"priority": 0, "delivery_info": {"exchange": "", "routing_key": "celery"}}}"#;
    let _: () = c
        .sadd("_kombu.binding.celery", "celery\x06\x16\x06\x16celery")
        .await
        .unwrap();
    for _ in 0..4 {
        let _: () = c.lpush("celery", message).await.unwrap();
    }
    for (pri, n) in [(3, 2), (6, 1), (9, 5)] {
        for _ in 0..n {
            let _: () = c
                .lpush(format!("celery\x06\x16{pri}"), message)
                .await
                .unwrap();
        }
    }
    let _: () = c.lpush("other", message).await.unwrap();
    let d = depth(&server, &probe(QueueType::Celery, "celery"))
        .await
        .unwrap();
    assert_eq!(part(&d, "priority 0"), 4);
    assert_eq!(part(&d, "priority 3"), 2);
    assert_eq!(part(&d, "priority 9"), 5);
    assert_eq!(d.total(), 12, "{d:?}");
}

#[tokio::test]
async fn sidekiq_rq_and_list() {
    let server = RedisServer::start_plain();
    let mut c = server.conn().await;
    // Sidekiq 7 Client#raw_push: SADD queues <q>, LPUSH queue:<q> <json>.
    let _: () = c.sadd("queues", "mailers").await.unwrap();
    for i in 0..3 {
        let job = format!(r#"{{"class":"Mailer","args":[{i}],"queue":"mailers","jid":"j{i}"}}"#);
        let _: () = c.lpush("queue:mailers", job).await.unwrap();
    }
    assert_eq!(
        depth(&server, &probe(QueueType::Sidekiq, "mailers"))
            .await
            .unwrap()
            .total(),
        3
    );

    // RQ 2: HSET rq:job:<id>, RPUSH rq:queue:<q> <id>, SADD rq:queues; a started job sits in
    // the StartedJobRegistry rq:wip:<q> (score = expiry); a scheduled one in
    // rq:scheduled:<q> (score = epoch seconds).
    let now_s = berth::autoscale::driver::now_ms() / 1000;
    let _: () = c.sadd("rq:queues", "rq:queue:default").await.unwrap();
    for id in ["a", "b"] {
        let _: () = c
            .hset_multiple(
                format!("rq:job:{id}"),
                &[("status", "queued"), ("origin", "default")],
            )
            .await
            .unwrap();
        let _: () = c.rpush("rq:queue:default", id).await.unwrap();
    }
    let _: () = c.zadd("rq:wip:default", "c", now_s + 180).await.unwrap();
    let _: () = c
        .zadd("rq:scheduled:default", "d", now_s - 5)
        .await
        .unwrap();
    let _: () = c
        .zadd("rq:scheduled:default", "e", now_s + 3600)
        .await
        .unwrap();
    let d = depth(&server, &probe(QueueType::Rq, "default"))
        .await
        .unwrap();
    assert_eq!(part(&d, "queued"), 2);
    assert_eq!(part(&d, "scheduled (due)"), 1);
    assert_eq!(part(&d, "started"), 1);
    assert_eq!((d.waiting(), d.in_flight()), (3, 1));

    let _: () = c.rpush("plain", &["1", "2"]).await.unwrap();
    assert_eq!(
        depth(&server, &probe(QueueType::List, "plain"))
            .await
            .unwrap()
            .total(),
        2
    );
    // A missing key is an empty queue.
    assert_eq!(
        depth(&server, &probe(QueueType::List, "nothing"))
            .await
            .unwrap()
            .total(),
        0
    );
    // A key of the wrong type is an error naming the key, not a zero.
    let _: () = c.set("notalist", "x").await.unwrap();
    let err = depth(&server, &probe(QueueType::List, "notalist"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProbeError::Command { key, .. } if key == "notalist"),
        "{err}"
    );
}

#[tokio::test]
async fn stream_counts_lag_and_pending() {
    let server = RedisServer::start_plain();
    let mut c = server.conn().await;
    let stream =
        QueueProbe::from_parts(QueueType::Stream, "events", None, Some("workers")).unwrap();
    // No stream yet: zero, not an error.
    assert_eq!(depth(&server, &stream).await.unwrap().total(), 0);
    for i in 0..5 {
        let _: String = c.xadd("events", "*", &[("n", i)]).await.unwrap();
    }
    // No group yet: every entry waits.
    assert_eq!(depth(&server, &stream).await.unwrap().total(), 5);
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "events", "workers", "0"])
        .query_async(&mut c)
        .await
        .unwrap();
    // A consumer reads two (pending, not acked), acks one.
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP", "workers", "c1", "COUNT", "2", "STREAMS", "events", ">",
        ])
        .query_async(&mut c)
        .await
        .unwrap();
    let first_id = first_entry_id(&read);
    let _: i64 = c.xack("events", "workers", &[first_id]).await.unwrap();
    let d = depth(&server, &stream).await.unwrap();
    assert_eq!(part(&d, "lag"), 3);
    assert_eq!(part(&d, "pending"), 1);
    assert_eq!(d.total(), 4);
}

fn first_entry_id(v: &redis::Value) -> String {
    // [[stream, [[id, [field, value]], ...]]] (RESP2) or a map (RESP3).
    fn find(v: &redis::Value) -> Option<String> {
        match v {
            redis::Value::BulkString(b) if b.contains(&b'-') => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            redis::Value::Array(a) => a.iter().find_map(find),
            redis::Value::Map(m) => m.iter().find_map(|(_, v)| find(v)),
            _ => None,
        }
    }
    find(v).expect("an entry id")
}

#[tokio::test]
async fn password_and_tls() {
    let server = RedisServer::start_with(Options {
        password: Some("s3cret-pw".into()),
        tls: true,
        ..Default::default()
    });
    let mut c = server.conn().await;
    let _: () = c.rpush("jobs", &["1", "2", "3"]).await.unwrap();
    assert!(server.url().starts_with("rediss://:s3cret-pw@"));
    assert_eq!(
        depth(&server, &probe(QueueType::List, "jobs"))
            .await
            .unwrap()
            .total(),
        3
    );

    // A wrong password: an error that names the Redis without the password.
    let pool = Pool::new();
    let wrong = RedisTarget::new(
        server.url().replace("s3cret-pw", "wrong-pw"),
        server.ca_pem(),
    );
    let err = read_probes(&pool, &wrong, &[&probe(QueueType::List, "jobs")], 0)
        .await
        .remove(0)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        !text.contains("wrong-pw") && !text.contains("s3cret"),
        "{text}"
    );
    assert!(text.contains(":***@127.0.0.1"), "{text}");
}

#[tokio::test]
async fn many_workers_share_one_round_trip() {
    let server = RedisServer::start_plain();
    let mut c = server.conn().await;
    for i in 0..50 {
        for _ in 0..i {
            let _: () = c.lpush(format!("q{i}"), "job").await.unwrap();
        }
    }
    let pool = Pool::new();
    let target = RedisTarget::new(server.url(), None);
    let probes: Vec<QueueProbe> = (0..50)
        .map(|i| probe(QueueType::List, &format!("q{i}")))
        .collect();
    let refs: Vec<&QueueProbe> = probes.iter().collect();
    let depths = read_probes(&pool, &target, &refs, 0).await;
    for (i, d) in depths.into_iter().enumerate() {
        assert_eq!(d.unwrap().total(), i as i64);
    }
    assert_eq!(pool.get(&target).round_trips(), 1);
    assert_eq!(pool.len(), 1);
}

#[tokio::test]
async fn berth_queue_depth_prints_what_the_autoscaler_sees() {
    let server = RedisServer::start_with(Options {
        password: Some("cli-pw-42".into()),
        tls: false,
        ..Default::default()
    });
    let mut c = server.conn().await;
    let _: () = c.lpush("bull:mail:wait", &["1", "2"]).await.unwrap();
    let _: () = c.lpush("bull:mail:active", "3").await.unwrap();
    let run = |quiet: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(["queue", "depth", "--type", "bullmq", "--name", "mail"])
            .env("BERTH_REDIS_URL", server.url());
        if quiet {
            cmd.arg("-q");
        }
        cmd.output().unwrap()
    };
    let quiet = run(true);
    assert!(quiet.status.success());
    assert_eq!(String::from_utf8(quiet.stdout).unwrap(), "3\n");
    let full = run(false);
    let out = String::from_utf8(full.stdout).unwrap();
    assert_eq!(out.lines().last(), Some("3"), "{out}");
    assert!(
        out.contains("bull:mail:wait") && out.contains("(in flight)"),
        "{out}"
    );
    assert!(
        out.contains(":***@127.0.0.1") && !out.contains("cli-pw-42"),
        "{out}"
    );
}
