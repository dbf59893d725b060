//! The Worker controller and its autoscaler end to end: a real redis-server, and kube's own
//! client over a fake API server (tower-test) that records every request.

#[path = "support/redis.rs"]
mod redis_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth::api::Worker;
use berth::workers::{context, reconcile, Metrics};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::client::Body;
use redis::AsyncCommands;
use redis_support::{Options, RedisServer};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "pw-never-shown-7f3a";

#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    query: String,
    body: Value,
}

/// A fake API server: answers what the Worker controller asks and records every request.
#[derive(Clone)]
struct FakeApi {
    log: Arc<Mutex<Vec<Recorded>>>,
    client: kube::Client,
}

impl FakeApi {
    fn start(worker: Value, secret: Value) -> FakeApi {
        FakeApi::with_objects(
            worker,
            vec![("/api/v1/namespaces/prod/secrets/cache".into(), secret)],
        )
    }

    /// `objects`: what GET answers, by path (everything else not found).
    fn with_objects(worker: Value, objects: Vec<(String, Value)>) -> FakeApi {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let served = log.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or("").to_string();
                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (status, reply) = answer(&method, &path, &body, &worker, &objects);
                served.lock().unwrap().push(Recorded {
                    method,
                    path,
                    query,
                    body,
                });
                let resp = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap();
                send.send_response(resp);
            }
        });
        FakeApi {
            log,
            client: kube::Client::new(service, "default"),
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    fn matching(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    /// Polls the log until `pred` holds for some request (with a deadline).
    async fn wait_for(&self, what: &str, pred: impl Fn(&Recorded) -> bool) -> Recorded {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(r) = self.requests().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within 15s; requests: {:#?}",
                self.requests()
                    .iter()
                    .map(|r| format!("{} {} {}", r.method, r.path, r.body))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

fn answer(
    method: &str,
    path: &str,
    body: &Value,
    worker: &Value,
    objects: &[(String, Value)],
) -> (StatusCode, Value) {
    const DEPLOY: &str = "/apis/apps/v1/namespaces/prod/deployments/render";
    if method == "GET" {
        if let Some((_, v)) = objects.iter().find(|(p, _)| p == path) {
            return (StatusCode::OK, v.clone());
        }
    }
    match (method, path) {
        ("GET", DEPLOY) => not_found(),
        ("PATCH", DEPLOY) => {
            // Server-side apply: echo the object with every replica updated and available.
            let mut d = body.clone();
            let n = d["spec"]["replicas"].clone();
            d["status"] = json!({"replicas": n, "updatedReplicas": n, "availableReplicas": n,
                "readyReplicas": n});
            (StatusCode::OK, d)
        }
        ("PATCH", p) if p == format!("{DEPLOY}/scale") => {
            let n = body["spec"]["replicas"].clone();
            (
                StatusCode::OK,
                json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                       "metadata": {"name": "render", "namespace": "prod"},
                       "spec": {"replicas": n}, "status": {"replicas": n}}),
            )
        }
        ("PATCH", "/apis/berth.dev/v1alpha1/namespaces/prod/workers/render/status") => {
            let mut w = worker.clone();
            w["status"] = body["status"].clone();
            (StatusCode::OK, w)
        }
        ("POST", "/apis/events.k8s.io/v1/namespaces/prod/events") => (StatusCode::OK, body.clone()),
        _ => not_found(),
    }
}

fn worker_json(extra: Value) -> Value {
    let mut w = json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Worker",
        "metadata": {"name": "render", "namespace": "prod", "uid": "uid-render", "generation": 1},
        "spec": {
            "image": "ghcr.io/acme/render:1", "command": ["node", "worker.js"],
            "queue": {"type": "list", "name": "jobs",
                      "redis": {"urlSecretRef": {"name": "cache", "key": "url"}}},
            "terminationGracePeriodSeconds": 900
        }
    });
    w["spec"]
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    w
}

fn secret_json(url: &str) -> Value {
    named_secret("cache", url)
}

fn named_secret(name: &str, url: &str) -> Value {
    let s = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("prod".into()),
            ..Default::default()
        },
        data: Some([("url".to_string(), ByteString(url.as_bytes().to_vec()))].into()),
        ..Default::default()
    };
    let mut v = serde_json::to_value(s).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

fn is_scale(r: &Recorded) -> bool {
    r.method == "PATCH" && r.path.ends_with("/deployments/render/scale")
}

fn condition<'a>(status_patch: &'a Recorded, type_: &str) -> Option<&'a Value> {
    status_patch.body["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

#[tokio::test]
async fn scales_on_depth_holds_through_an_outage_and_resumes() {
    let mut redis = RedisServer::start_with(Options {
        password: Some(PASSWORD.into()),
        tls: false,
        ..Options::default()
    });
    let worker = worker_json(json!({"scaling": {
        "minReplicas": 0, "maxReplicas": 10, "jobsPerReplica": 5, "pollInterval": "200ms"}}));
    let api = FakeApi::start(worker.clone(), secret_json(&redis.url()));
    let ctx = context(api.client.clone(), Arc::new(Metrics::default()));
    let w: Worker = serde_json::from_value(worker).unwrap();
    reconcile(Arc::new(kube::core::DeserializeGuard(Ok(w))), ctx.clone())
        .await
        .unwrap();

    // The Deployment: server-side apply by `berth`, replicas from minReplicas, the grace period.
    let applies = api.matching("PATCH", "/apis/apps/v1/namespaces/prod/deployments/render");
    assert_eq!(applies.len(), 1);
    assert!(
        applies[0].query.contains("fieldManager=berth"),
        "{}",
        applies[0].query
    );
    assert!(applies[0].query.contains("force=true"));
    let d = &applies[0].body;
    assert_eq!(d["spec"]["replicas"], 0);
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        json!({"berth.dev/worker": "render"})
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        900
    );
    assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "uid-render");
    let status = api
        .wait_for("first status", |r| {
            r.path.ends_with("/workers/render/status")
        })
        .await;
    assert_eq!(status.body["status"]["selector"], "berth.dev/worker=render");

    let token = CancellationToken::new();
    let driver = ctx.driver.clone();
    let t = token.clone();
    let running = tokio::spawn(async move { driver.run(t).await });

    // 12 jobs, 5 per replica: exactly one scale request to 3.
    let mut c = redis.conn().await;
    let jobs: Vec<String> = (0..12).map(|i| format!("job-{i}")).collect();
    let _: () = c.lpush("jobs", &jobs).await.unwrap();
    let scale = api.wait_for("scale to 3", is_scale).await;
    assert_eq!(scale.body, json!({"spec": {"replicas": 3}}));
    assert!(scale.query.contains("fieldManager=berth"));
    let event = api
        .wait_for("scale event", |r| {
            r.method == "POST" && r.path.ends_with("/events")
        })
        .await;
    let note = event.body["note"].as_str().unwrap();
    assert!(
        note.contains("0 → 3") && note.contains("queue depth 12"),
        "{note}"
    );
    assert_eq!(event.body["regarding"]["name"], "render");
    let s = api
        .wait_for("status with desiredReplicas 3", |r| {
            r.path.ends_with("/status") && r.body["status"]["desiredReplicas"] == 3
        })
        .await;
    assert_eq!(condition(&s, "QueueReachable").unwrap()["status"], "True");

    // Redis goes away: QueueReachable=False with the reason, and no scale request.
    redis.stop();
    let down = api
        .wait_for("QueueReachable=False", |r| {
            r.path.ends_with("/status")
                && condition(r, "QueueReachable").is_some_and(|c| c["status"] == "False")
        })
        .await;
    let c_down = condition(&down, "QueueReachable").unwrap();
    assert_eq!(c_down["reason"], "RedisUnreachable");
    assert!(
        c_down["message"]
            .as_str()
            .unwrap()
            .contains(":***@127.0.0.1"),
        "{c_down}"
    );
    assert_eq!(down.body["status"]["desiredReplicas"], 3);
    // Polls during the outage decide to hold, every time.
    for _ in 0..3 {
        for (_, o) in ctx.driver.poll_due(Instant::now(), true).await {
            assert!(o.depth.is_err());
            assert_eq!((o.current, o.decision.desired), (3, 3));
            assert!(o.scaled.is_none());
        }
    }
    assert_eq!(api.requests().iter().filter(|r| is_scale(r)).count(), 1);

    // Redis is back (empty: no persistence) and 30 jobs arrive: scaling resumes, to 6.
    redis.start();
    let mut c = redis.conn().await;
    let jobs: Vec<String> = (0..30).map(|i| format!("job-{i}")).collect();
    let _: () = c.lpush("jobs", &jobs).await.unwrap();
    let up = api
        .wait_for("scale to 6", |r| {
            is_scale(r) && r.body["spec"]["replicas"] == 6
        })
        .await;
    assert_eq!(up.body, json!({"spec": {"replicas": 6}}));
    api.wait_for("QueueReachable=True again", |r| {
        r.path.ends_with("/status")
            && r.body["status"]["desiredReplicas"] == 6
            && condition(r, "QueueReachable").is_some_and(|c| c["status"] == "True")
    })
    .await;

    token.cancel();
    running.await.unwrap();

    // The password never left the operator.
    for r in api.requests() {
        let text = r.body.to_string();
        assert!(
            !text.contains(PASSWORD),
            "{} {} leaks it: {text}",
            r.method,
            r.path
        );
    }
}

#[tokio::test]
async fn without_scaling_spec_replicas_rules() {
    let redis = RedisServer::start_plain();
    let worker = worker_json(json!({"replicas": 3}));
    let api = FakeApi::start(worker.clone(), secret_json(&redis.url()));
    let ctx = context(api.client.clone(), Arc::new(Metrics::default()));
    reconcile(
        Arc::new(serde_json::from_value(worker.clone()).unwrap()),
        ctx.clone(),
    )
    .await
    .unwrap();
    let applies = api.matching("PATCH", "/apis/apps/v1/namespaces/prod/deployments/render");
    assert_eq!(applies[0].body["spec"]["replicas"], 3);
    assert!(
        !ctx.driver.contains("prod/render"),
        "no autoscaling without scaling"
    );
    let status = api
        .wait_for("status", |r| r.path.ends_with("/status"))
        .await;
    assert_eq!(status.body["status"]["desiredReplicas"], 3);
    assert_eq!(status.body["status"]["replicas"], 3);
    assert!(condition(&status, "QueueReachable").is_none());
    assert_eq!(condition(&status, "Ready").unwrap()["status"], "True");

    // `kubectl scale worker/render --replicas=5` changes spec.replicas through the scale
    // subresource; the next reconcile applies it.
    let mut scaled = worker;
    scaled["spec"]["replicas"] = json!(5);
    scaled["metadata"]["generation"] = json!(2);
    reconcile(
        Arc::new(serde_json::from_value(scaled).unwrap()),
        ctx.clone(),
    )
    .await
    .unwrap();
    let applies = api.matching("PATCH", "/apis/apps/v1/namespaces/prod/deployments/render");
    assert_eq!(applies.last().unwrap().body["spec"]["replicas"], 5);
    assert!(api.requests().iter().all(|r| !is_scale(r)));
}

#[tokio::test]
async fn missing_secret_is_a_condition_not_a_crash() {
    let worker = worker_json(json!({"scaling": {"maxReplicas": 4}}));
    let api = FakeApi::start(worker.clone(), secret_json("redis://cache:6379/0"));
    // The fake has the Secret `cache` only: `absent` is a 404.
    let mut w = worker;
    w["spec"]["queue"]["redis"]["urlSecretRef"]["name"] = json!("absent");
    let ctx = context(api.client.clone(), Arc::new(Metrics::default()));
    reconcile(Arc::new(serde_json::from_value(w).unwrap()), ctx.clone())
        .await
        .unwrap();
    let status = api
        .wait_for("status", |r| r.path.ends_with("/status"))
        .await;
    let ready = condition(&status, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "RedisSecretNotFound");
    assert!(ready["message"].as_str().unwrap().contains("absent"));
    assert!(!ctx.driver.contains("prod/render"));
    assert!(
        api.matching("PATCH", "/apis/apps/v1/namespaces/prod/deployments/render")
            .is_empty(),
        "nothing applied before the Worker can be carried out"
    );
}

#[tokio::test]
async fn a_stack_worker_reads_the_stacks_redis() {
    let redis = RedisServer::start_with(Options {
        password: Some(PASSWORD.into()),
        tls: false,
        ..Options::default()
    });
    let mut worker = worker_json(json!({"appStackRef": "shop",
        "scaling": {"maxReplicas": 4, "jobsPerReplica": 2, "pollInterval": "200ms"}}));
    worker["spec"]["queue"] = json!({"type": "celery", "name": "celery"});
    let stack = json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
        "metadata": {"name": "shop", "namespace": "prod", "uid": "uid-shop"},
        "spec": {"api": {"image": "shop:1"}, "redis": {}}
    });
    let api = FakeApi::with_objects(
        worker.clone(),
        vec![
            (
                "/apis/berth.dev/v1alpha1/namespaces/prod/appstacks/shop".into(),
                stack,
            ),
            (
                "/api/v1/namespaces/prod/secrets/shop-redis-credentials".into(),
                named_secret("shop-redis-credentials", &redis.url()),
            ),
        ],
    );
    let ctx = context(api.client.clone(), Arc::new(Metrics::default()));
    reconcile(
        Arc::new(serde_json::from_value(worker).unwrap()),
        ctx.clone(),
    )
    .await
    .unwrap();
    let applies = api.matching("PATCH", "/apis/apps/v1/namespaces/prod/deployments/render");
    let labels = &applies[0].body["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["berth.dev/stack"], "shop");
    assert_eq!(labels["app.kubernetes.io/component"], "worker");
    assert!(ctx.driver.contains("prod/render"));

    // Celery jobs at priority 0 and 9: both counted.
    let mut c = redis.conn().await;
    let _: () = c.lpush("celery", &["a", "b"]).await.unwrap();
    let _: () = c.lpush("celery\x06\x169", &["c", "d", "e"]).await.unwrap();
    let outcomes = ctx.driver.poll_due(Instant::now(), true).await;
    let (_, o) = &outcomes[0];
    assert_eq!(o.depth.as_ref().unwrap().total(), 5);
    assert_eq!(o.scaled.as_ref().map(|s| (s.from, s.to)), Some((0, 3)));
    api.wait_for("scale to 3", |r| {
        is_scale(r) && r.body["spec"]["replicas"] == 3
    })
    .await;
}

/// A Worker that does not deserialize (here `queue` is a word) is not an error that stalls the
/// controller: it gets a Warning Event `InvalidObject`, nothing is applied, and it waits for a
/// change; the next good Worker is reconciled by the same context as usual.
#[tokio::test]
async fn a_worker_that_does_not_deserialize_gets_an_event_and_nothing_else() {
    let redis = RedisServer::start_plain();
    let good = worker_json(json!({"replicas": 2}));
    let api = FakeApi::start(good.clone(), secret_json(&redis.url()));
    let ctx = context(api.client.clone(), Arc::new(Metrics::default()));
    let mut bad = good.clone();
    bad["spec"]["queue"] = json!("jobs");
    let guarded: kube::core::DeserializeGuard<Worker> = serde_json::from_value(bad).unwrap();
    assert!(
        guarded.0.is_err(),
        "the guard holds the error instead of failing the watch"
    );
    let action = reconcile(Arc::new(guarded), ctx.clone()).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    let event = api
        .wait_for("an InvalidObject event", |r| r.path.contains("/events"))
        .await;
    assert_eq!(event.body["reason"], "InvalidObject");
    assert_eq!(event.body["type"], "Warning");
    assert!(api
        .matching("PATCH", "/apis/apps/v1/namespaces/prod/deployments/render")
        .is_empty());
    reconcile(Arc::new(serde_json::from_value(good).unwrap()), ctx.clone())
        .await
        .unwrap();
    let applies = api.matching("PATCH", "/apis/apps/v1/namespaces/prod/deployments/render");
    assert_eq!(applies[0].body["spec"]["replicas"], 2);
}

/// A periodic reconcile of an unchanged Worker reads nothing: its AppStack comes from the
/// controller's cache, its Redis Secret from memory. The Secret is read again once when the
/// queue probe starts failing (rotated credentials) and when the Worker changes, not on every
/// reconcile while Redis stays down.
#[tokio::test]
async fn resyncs_read_nothing_and_the_secret_is_reread_when_the_queue_fails() {
    let mut redis = RedisServer::start_with(Options {
        password: Some(PASSWORD.into()),
        tls: false,
        ..Options::default()
    });
    let mut worker = worker_json(json!({"appStackRef": "shop",
        "scaling": {"maxReplicas": 4, "jobsPerReplica": 2, "pollInterval": "200ms"}}));
    worker["spec"]["queue"] = json!({"type": "list", "name": "jobs"});
    let stack = json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
        "metadata": {"name": "shop", "namespace": "prod", "uid": "uid-shop", "generation": 1},
        "spec": {"api": {"image": "shop:1"}, "redis": {}}
    });
    const STACK: &str = "/apis/berth.dev/v1alpha1/namespaces/prod/appstacks/shop";
    const SECRET: &str = "/api/v1/namespaces/prod/secrets/shop-redis-credentials";
    let api = FakeApi::with_objects(
        worker.clone(),
        vec![
            (STACK.into(), stack.clone()),
            (
                SECRET.into(),
                named_secret("shop-redis-credentials", &redis.url()),
            ),
        ],
    );
    // The AppStack cache as the watch fills it.
    let (stacks, mut writer) = kube::runtime::reflector::store();
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
        serde_json::from_value(stack).unwrap(),
    ));
    let ctx = berth::workers::context_with(
        api.client.clone(),
        Arc::new(Metrics::default()),
        berth::controller::cache::Cache::default(),
        stacks,
    );
    let reconcile_now = |w: &Value| {
        let w: Worker = serde_json::from_value(w.clone()).unwrap();
        reconcile(Arc::new(kube::core::DeserializeGuard(Ok(w))), ctx.clone())
    };
    let secret_reads = || api.matching("GET", SECRET).len();

    reconcile_now(&worker).await.unwrap();
    assert_eq!(secret_reads(), 1);
    let outcomes = ctx.driver.poll_due(Instant::now(), true).await;
    assert!(outcomes[0].1.depth.is_ok(), "the queue answers");
    reconcile_now(&worker).await.unwrap();
    reconcile_now(&worker).await.unwrap();
    assert_eq!(
        secret_reads(),
        1,
        "resyncs of an unchanged Worker read no Secret"
    );
    assert!(
        api.matching("GET", STACK).is_empty(),
        "the AppStack comes from the cache"
    );

    // Redis stops answering (as with rotated credentials): one re-read, not one per resync.
    redis.stop();
    let outcomes = ctx.driver.poll_due(Instant::now(), true).await;
    assert!(outcomes[0].1.depth.is_err());
    reconcile_now(&worker).await.unwrap();
    assert_eq!(
        secret_reads(),
        2,
        "a failing queue re-reads the Secret once"
    );
    reconcile_now(&worker).await.unwrap();
    assert_eq!(secret_reads(), 2, "still failing: not read on every resync");

    // The Worker changed: read again.
    worker["metadata"]["generation"] = json!(2);
    reconcile_now(&worker).await.unwrap();
    assert_eq!(secret_reads(), 3);
}

/// The Worker controller keeps its Deployments without their pod template (a digest of the
/// whole object and the replica count, `trim_keeping_replicas`): an unchanged Deployment is
/// neither read nor applied again; a restarted controller reads it once; a change by someone
/// else (a new digest) is read once and corrected.
#[tokio::test]
async fn deployments_cached_without_their_template_are_read_once_and_kept_current() {
    const DEPLOY: &str = "/apis/apps/v1/namespaces/prod/deployments/render";
    let redis = RedisServer::start_plain();
    let worker = worker_json(json!({"replicas": 3}));
    let reconcile_with = |ctx: Arc<berth::workers::Context>| {
        let w: Worker = serde_json::from_value(worker.clone()).unwrap();
        reconcile(Arc::new(kube::core::DeserializeGuard(Ok(w))), ctx)
    };
    // The watch keeps the Deployment as a compact record: the replica count and a digest.
    let cached = |d: &Value| {
        let d: berth::controller::child::Child<k8s_openapi::api::apps::v1::Deployment> =
            serde_json::from_value(d.clone()).unwrap();
        assert_eq!(d.replicas, Some(3), "the replica count is kept");
        kube::runtime::watcher::Event::Apply(d)
    };
    let deploy_requests = |api: &FakeApi| {
        api.requests()
            .into_iter()
            .filter(|r| r.path == DEPLOY)
            .map(|r| r.method)
            .collect::<Vec<_>>()
    };

    // First reconcile: applied; the watch then delivers the applied object, kept trimmed.
    let api = FakeApi::start(worker.clone(), secret_json(&redis.url()));
    let store = berth::controller::cache::Cache::default();
    let writer = store.clone();
    let ctx = berth::workers::context_with(
        api.client.clone(),
        Arc::new(Metrics::default()),
        store.clone(),
        kube::runtime::reflector::store().0,
    );
    reconcile_with(ctx.clone()).await.unwrap();
    assert_eq!(deploy_requests(&api), ["PATCH"]);
    let applied = api.matching("PATCH", DEPLOY)[0].body.clone();
    let mut served = applied.clone();
    served["status"] = json!({"replicas": 3, "updatedReplicas": 3, "availableReplicas": 3,
        "readyReplicas": 3});
    writer.apply_watcher_event(&cached(&served));
    reconcile_with(ctx.clone()).await.unwrap();
    reconcile_with(ctx.clone()).await.unwrap();
    assert_eq!(
        deploy_requests(&api),
        ["PATCH"],
        "an unchanged Deployment is neither read nor applied"
    );
    // The Worker changed: its Deployment, whose digest is known, is applied without a read.
    let mut changed: Worker = serde_json::from_value(worker.clone()).unwrap();
    changed.spec.container.image = "ghcr.io/acme/render:2".into();
    reconcile(
        Arc::new(kube::core::DeserializeGuard(Ok(changed))),
        ctx.clone(),
    )
    .await
    .unwrap();
    assert_eq!(deploy_requests(&api), ["PATCH", "PATCH"]);

    // Restart: nothing remembered, the same trimmed cache: one read of the whole object.
    let api = FakeApi::with_objects(
        worker.clone(),
        vec![
            (DEPLOY.into(), served.clone()),
            (
                "/api/v1/namespaces/prod/secrets/cache".into(),
                secret_json(&redis.url()),
            ),
        ],
    );
    let store = berth::controller::cache::Cache::default();
    store.apply_watcher_event(&cached(&served));
    let ctx = berth::workers::context_with(
        api.client.clone(),
        Arc::new(Metrics::default()),
        store,
        kube::runtime::reflector::store().0,
    );
    reconcile_with(ctx.clone()).await.unwrap();
    reconcile_with(ctx.clone()).await.unwrap();
    assert_eq!(deploy_requests(&api), ["GET"], "read once, not applied");

    // Someone changed the image: a new digest, read once, corrected.
    let mut drifted = served.clone();
    drifted["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil:1");
    let api = FakeApi::with_objects(
        worker.clone(),
        vec![
            (DEPLOY.into(), drifted.clone()),
            (
                "/api/v1/namespaces/prod/secrets/cache".into(),
                secret_json(&redis.url()),
            ),
        ],
    );
    let ctx = berth::workers::context_with(
        api.client.clone(),
        Arc::new(Metrics::default()),
        {
            let store = berth::controller::cache::Cache::default();
            store.apply_watcher_event(&cached(&drifted));
            store
        },
        kube::runtime::reflector::store().0,
    );
    reconcile_with(ctx.clone()).await.unwrap();
    assert_eq!(deploy_requests(&api), ["GET", "PATCH"]);
    let fixed = &api.matching("PATCH", DEPLOY)[0].body;
    assert_eq!(
        fixed["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/acme/render:1"
    );
}
