//! The Backup controller against kube's client over a mocked HTTP service, asserting each
//! request's method, path and body.

use super::*;
use crate::api::AppStack;
use k8s_openapi::api::batch::v1::CronJob;
use kube::core::DeserializeGuard;
use kube::runtime::{reflector, watcher};
use std::time::Duration;
type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Answers the next request after checking its method, path and query parts; `reply` turns the
/// request body into the response body. Returns the request body.
async fn expect(
    handle: &mut Handle,
    method: &str,
    path: &str,
    query: &[&str],
    reply: impl FnOnce(&Value) -> Value,
) -> Value {
    let (req, send) = handle
        .next_request()
        .await
        .expect("the controller made no request");
    // `A|B` accepts either method; a path ending in `*` is a prefix.
    assert!(
        method.split('|').any(|m| m == req.method().as_str()),
        "{} {}",
        req.method(),
        req.uri()
    );
    match path.strip_suffix('*') {
        Some(prefix) => assert!(req.uri().path().starts_with(prefix), "{}", req.uri()),
        None => assert_eq!(req.uri().path(), path),
    }
    let q = req.uri().query().unwrap_or("").to_string();
    for part in query {
        assert!(q.split('&').any(|p| p == *part), "{part} not in {q}");
    }
    let body = req.into_body().collect_bytes().await.unwrap();
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    let out = reply(&body);
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&out).unwrap()))
            .unwrap(),
    );
    body
}

fn echo(body: &Value) -> Value {
    body.clone()
}

/// The reply to a status patch: the object with the patched status.
fn with_status(object: Value) -> impl FnOnce(&Value) -> Value {
    move |body| {
        let mut o = object;
        o["status"] = body["status"].clone();
        o
    }
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {}, "items": items})
}

const SEL: &str = "labelSelector=berth.dev%2Fbackup%3Dvidgen";
const APPLY: [&str; 2] = ["fieldManager=berth", "force=true"];

#[tokio::test]
async fn reconcile_applies_cron_job_starts_backup_now_once_and_writes_status() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "prod");
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let ctx = Arc::new(Context::new(client, metrics, "berth:test".into()));
    let spec = json!({"destination": {"volume": null, "s3": {"bucket": "bk", "credentialsSecretRef": {"name": "s3"}}}});
    let b = backup(
        json!({"metadata": {"annotations": {BACKUP_NOW_ANNOTATION: "now-1"}}, "spec": spec}),
    );
    let hash = value_hash("now-1");
    let ok_report = RunReport {
        backup: Some(record("vidgen-20261122T020000Z.dump.zst")),
        backups: vec![record("vidgen-20261122T020000Z.dump.zst")],
        error: None,
    };
    let scheduled =
        serde_json::to_value(job("vidgen-29000000", t(2, 0), Some(true), Some(t(2, 1)))).unwrap();
    let pods = list(
        "Pod",
        vec![serde_json::to_value(pod("vidgen-29000000", &ok_report)).unwrap()],
    );

    // First reconcile: CronJob applied, the backup-now Job created, an Event, status written.
    let object = serde_json::to_value(&b).unwrap();
    let server = {
        let (scheduled, pods, hash) = (scheduled.clone(), pods.clone(), hash.clone());
        tokio::spawn(async move {
            let cj = expect(
                &mut handle,
                "PATCH",
                "/apis/batch/v1/namespaces/prod/cronjobs/vidgen",
                &APPLY,
                echo,
            )
            .await;
            assert_eq!(cj["kind"], "CronJob");
            assert_eq!(cj["spec"]["schedule"], "0 2 * * *");
            assert_eq!(cj["spec"]["timeZone"], "Europe/Berlin");
            assert_eq!(cj["spec"]["concurrencyPolicy"], "Forbid");
            assert_eq!(
                cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"][0]
                    ["valueFrom"]["secretKeyRef"]["name"],
                "db"
            );
            expect(
                &mut handle,
                "GET",
                "/apis/batch/v1/namespaces/prod/jobs",
                &[SEL],
                |_| list("Job", vec![scheduled.clone()]),
            )
            .await;
            let created = expect(
                &mut handle,
                "POST",
                "/apis/batch/v1/namespaces/prod/jobs",
                &[],
                echo,
            )
            .await;
            assert_eq!(created["metadata"]["name"], format!("vidgen-now-{hash}"));
            assert_eq!(
                created["metadata"]["labels"][BACKUP_NOW_LABEL],
                hash.as_str()
            );
            assert_eq!(created["metadata"]["ownerReferences"][0]["name"], "vidgen");
            assert_eq!(
                created["spec"]["template"]["spec"]["containers"][0]["args"][3],
                "s3://bk"
            );
            let ev = expect(
                &mut handle,
                "POST",
                "/apis/events.k8s.io/v1/namespaces/prod/events",
                &[],
                echo,
            )
            .await;
            assert_eq!(ev["reason"], "BackupStarted");
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/prod/pods",
                &[SEL],
                |_| pods.clone(),
            )
            .await;
            let st = expect(
                &mut handle,
                "PATCH",
                "/apis/berth.dev/v1alpha1/namespaces/prod/backups/vidgen/status",
                &APPLY,
                with_status(object),
            )
            .await;
            (handle, created, st)
        })
    };
    reconcile(Arc::new(b.clone()), ctx.clone()).await.unwrap();
    let (mut handle, created, st) = server.await.unwrap();
    assert_eq!(st["kind"], "Backup");
    assert_eq!(
        st["status"]["lastBackup"]["name"],
        "vidgen-20261122T020000Z.dump.zst"
    );
    assert_eq!(st["status"]["backups"].as_array().unwrap().len(), 1);
    assert_eq!(st["status"]["lastSuccessfulTime"], "2026-11-22T02:01:00Z");
    assert_eq!(st["status"]["observedGeneration"], 2);
    assert_eq!(st["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(st["status"]["conditions"][0]["status"], "True");

    // Second reconcile, same annotation, the status as written: no new Job, no status write.
    let mut b2 = b.clone();
    b2.status = Some(serde_json::from_value(st["status"].clone()).unwrap());
    let server = {
        let (scheduled, pods, created) = (scheduled.clone(), pods.clone(), created.clone());
        tokio::spawn(async move {
            expect(
                &mut handle,
                "PATCH",
                "/apis/batch/v1/namespaces/prod/cronjobs/vidgen",
                &APPLY,
                echo,
            )
            .await;
            expect(
                &mut handle,
                "GET",
                "/apis/batch/v1/namespaces/prod/jobs",
                &[SEL],
                |_| list("Job", vec![scheduled.clone(), created.clone()]),
            )
            .await;
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/prod/pods",
                &[SEL],
                |_| pods.clone(),
            )
            .await;
            handle
        })
    };
    reconcile(Arc::new(b2.clone()), ctx.clone()).await.unwrap();
    let mut handle = server.await.unwrap();

    // A new annotation value starts one more Job.
    let mut b3 = b2.clone();
    b3.metadata.annotations =
        Some([(BACKUP_NOW_ANNOTATION.to_string(), "now-2".to_string())].into());
    let server = {
        let (scheduled, pods, created) = (scheduled.clone(), pods.clone(), created.clone());
        tokio::spawn(async move {
            expect(
                &mut handle,
                "PATCH",
                "/apis/batch/v1/namespaces/prod/cronjobs/vidgen",
                &APPLY,
                echo,
            )
            .await;
            expect(
                &mut handle,
                "GET",
                "/apis/batch/v1/namespaces/prod/jobs",
                &[SEL],
                |_| list("Job", vec![scheduled.clone(), created.clone()]),
            )
            .await;
            let again = expect(
                &mut handle,
                "POST",
                "/apis/batch/v1/namespaces/prod/jobs",
                &[],
                echo,
            )
            .await;
            assert_eq!(
                again["metadata"]["name"],
                format!("vidgen-now-{}", value_hash("now-2"))
            );
            // The recorder sends a repeated reason as a series update of the first event.
            expect(
                &mut handle,
                "POST|PATCH",
                "/apis/events.k8s.io/v1/namespaces/prod/events*",
                &[],
                echo,
            )
            .await;
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/prod/pods",
                &[SEL],
                |_| pods.clone(),
            )
            .await;
            handle
        })
    };
    reconcile(Arc::new(b3), ctx.clone()).await.unwrap();
    let mut handle = server.await.unwrap();
    drop(ctx);
    assert!(handle.next_request().await.is_none(), "no further requests");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("berth_backup_now_jobs_total 2"), "{text}");
}

#[tokio::test]
async fn missing_app_stack_sets_ready_false() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "prod");
    let mut registry = prometheus_client::registry::Registry::default();
    let ctx = Arc::new(Context::new(
        client,
        Arc::new(Metrics::register(&mut registry)),
        "berth:test".into(),
    ));
    let b = backup(json!({"spec": {"database": {"urlSecretRef": null, "appStackRef": "shop"}}}));
    let object = serde_json::to_value(&b).unwrap();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(
            req.uri().path(),
            "/apis/berth.dev/v1alpha1/namespaces/prod/appstacks/shop"
        );
        send.send_response(
            Response::builder()
                .status(404)
                .body(Body::from(serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404})).unwrap()))
                .unwrap(),
        );
        let st = expect(
            &mut handle,
            "PATCH",
            "/apis/berth.dev/v1alpha1/namespaces/prod/backups/vidgen/status",
            &APPLY,
            with_status(object),
        )
        .await;
        assert_eq!(st["status"]["conditions"][0]["status"], "False");
        assert_eq!(st["status"]["conditions"][0]["reason"], "AppStackNotFound");
        assert!(st["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("shop"));
    });
    reconcile(Arc::new(b), ctx).await.unwrap();
    server.await.unwrap();
}

/// With the controller's caches (AppStacks, Jobs, CronJobs) a periodic reconcile of an
/// unchanged Backup sends nothing: no AppStack read, no Job or Pod list, the volume claim and
/// the CronJob not applied again, the status unchanged.
#[tokio::test]
async fn a_resync_of_an_unchanged_backup_sends_no_request() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "prod");
    let metrics = Arc::new(Metrics::default());
    let stack: DeserializeGuard<AppStack> = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
        "metadata": {"name": "vidgen", "namespace": "prod", "uid": "u-s"},
        "spec": {"api": {"image": "a:1"}, "postgres": {"version": "16"}}
    }))
    .unwrap();
    let (stacks, mut stack_writer) = reflector::store();
    stack_writer.apply_watcher_event(&watcher::Event::Apply(stack));
    let cron_jobs = crate::controller::cache::Cache::<CronJob>::default();
    let cron_writer = cron_jobs.clone();
    let ctx = Arc::new(Context {
        stacks,
        cron_jobs,
        jobs: Some(reflector::store().0),
        ..Context::new(client, metrics, "berth:test".into())
    });
    let b = backup(json!({"spec": {"database": {"urlSecretRef": null, "appStackRef": "vidgen"}}}));
    let object = serde_json::to_value(&b).unwrap();

    // First reconcile: the claim, the CronJob and the status; nothing read.
    let server = tokio::spawn(async move {
        let claim = expect(
            &mut handle,
            "PATCH",
            "/api/v1/namespaces/prod/persistentvolumeclaims/*",
            &APPLY,
            echo,
        )
        .await;
        assert_eq!(claim["kind"], "PersistentVolumeClaim");
        let cj = expect(
            &mut handle,
            "PATCH",
            "/apis/batch/v1/namespaces/prod/cronjobs/vidgen",
            &APPLY,
            echo,
        )
        .await;
        let st = expect(
            &mut handle,
            "PATCH",
            "/apis/berth.dev/v1alpha1/namespaces/prod/backups/vidgen/status",
            &APPLY,
            with_status(object),
        )
        .await;
        (handle, cj, st)
    });
    reconcile(Arc::new(b.clone()), ctx.clone()).await.unwrap();
    let (mut handle, cj, st) = server.await.unwrap();
    // The watch sees the applied CronJob (and keeps it as a compact record, as the
    // controller's watch does); the Backup carries the status written.
    let trimmed = || {
        let o: crate::controller::child::Child<CronJob> =
            serde_json::from_value(cj.clone()).unwrap();
        let full: CronJob = serde_json::from_value(cj.clone()).unwrap();
        assert_eq!(o.digest, crate::controller::child::digest(&full));
        o
    };
    cron_writer.apply_watcher_event(&watcher::Event::Apply(trimmed()));
    let mut b2 = b.clone();
    b2.status = Some(serde_json::from_value(st["status"].clone()).unwrap());

    // A request would wait for an answer nobody sends: the reconcile must end by itself.
    let resync = tokio::spawn(tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(Arc::new(b2), ctx.clone()),
    ));
    let first = tokio::time::timeout(Duration::from_millis(500), handle.next_request()).await;
    assert!(
        first.is_err(),
        "the resync sent {:?}",
        first
            .ok()
            .flatten()
            .map(|(r, _)| format!("{} {}", r.method(), r.uri()))
    );
    resync.await.unwrap().expect("the resync ended").unwrap();
    let extra = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    assert!(
        extra.is_err(),
        "the resync sent {:?}",
        extra
            .ok()
            .flatten()
            .map(|(r, _)| format!("{} {}", r.method(), r.uri()))
    );

    // A restarted controller (nothing remembered) with the same trimmed cache: the CronJob is
    // read once, whole, and not applied; the next resync reads nothing.
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (stacks, mut stack_writer) = reflector::store();
    stack_writer.apply_watcher_event(&watcher::Event::Apply(
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
            "metadata": {"name": "vidgen", "namespace": "prod", "uid": "u-s"},
            "spec": {"api": {"image": "a:1"}, "postgres": {"version": "16"}}
        }))
        .unwrap(),
    ));
    let cron_jobs = crate::controller::cache::Cache::<CronJob>::default();
    cron_jobs.apply_watcher_event(&watcher::Event::Apply(trimmed()));
    let restarted = Arc::new(Context {
        stacks,
        cron_jobs,
        jobs: Some(reflector::store().0),
        ..Context::new(
            Client::new(service, "prod"),
            Arc::new(Metrics::default()),
            "berth:test".into(),
        )
    });
    let whole = cj.clone();
    let server = tokio::spawn(async move {
        // The volume claim's hash is not remembered either: applied once more.
        expect(
            &mut handle,
            "PATCH",
            "/api/v1/namespaces/prod/persistentvolumeclaims/*",
            &APPLY,
            echo,
        )
        .await;
        expect(
            &mut handle,
            "GET",
            "/apis/batch/v1/namespaces/prod/cronjobs/vidgen",
            &[],
            move |_| whole,
        )
        .await;
        handle
    });
    let mut b3 = b.clone();
    b3.status = Some(serde_json::from_value(st["status"].clone()).unwrap());
    reconcile(Arc::new(b3.clone()), restarted.clone())
        .await
        .unwrap();
    let mut handle = server.await.unwrap();
    let resync = tokio::spawn(tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(Arc::new(b3), restarted.clone()),
    ));
    let next = tokio::time::timeout(Duration::from_millis(500), handle.next_request()).await;
    assert!(
        next.is_err(),
        "after one read the CronJob's digest is known; the resync sent {:?}",
        next.ok()
            .flatten()
            .map(|(r, _)| format!("{} {}", r.method(), r.uri()))
    );
    resync.await.unwrap().expect("the resync ended").unwrap();
}
