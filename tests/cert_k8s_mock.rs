//! The exact requests the Certificate controller sends, over kube's client on a mocked API:
//! a selfSigned Certificate without a Secret → GET the Secret, server-side apply it, an Event,
//! the status; the same Certificate with its Secret in place and nothing due → one GET and no
//! write; an ACME Certificate → the CronJob and a Job at once.

#[path = "support/kube_mock.rs"]
mod kube_mock;

use std::sync::{Arc, Mutex};

use berth::api::Certificate;
use berth::cert::kube::controller::{reconcile, Context, Metrics};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMetaExt;
use kube_mock::{mock_api, status, Recorded};
use serde_json::{json, Value};

fn cert(spec: Value, status: Option<Value>) -> Certificate {
    let mut v = json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Certificate",
        "metadata": {"name": "web", "namespace": "prod", "uid": "u-1", "generation": 3},
        "spec": spec
    });
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).unwrap()
}

/// An apply answer: the body with the metadata the apiserver would add.
fn answered(r: &Recorded) -> Value {
    let mut b = r.body.clone().unwrap_or(json!({}));
    if b.get("metadata").is_none() {
        b["metadata"] = json!({"name": "web", "namespace": "prod"});
    }
    if b.get("spec").is_none() {
        b["spec"] = self_signed();
    }
    b
}

fn self_signed() -> Value {
    json!({"secretName": "web-tls", "dnsNames": ["web.example.test"], "issuer": {"selfSigned": {}}, "duration": "24h"})
}

#[tokio::test]
async fn self_signed_without_secret_applies_it_and_writes_status() {
    let secret_body = Arc::new(Mutex::new(None::<Value>));
    let sb = secret_body.clone();
    let api = mock_api(Arc::new(move |r: &Recorded| {
        match (r.method.as_str(), r.path()) {
            ("GET", "/api/v1/namespaces/prod/secrets/web-tls") => (404, status(404, "NotFound")),
            ("PATCH", "/api/v1/namespaces/prod/secrets/web-tls") => {
                *sb.lock().unwrap() = r.body.clone();
                (200, r.body.clone().unwrap())
            }
            ("PATCH", p) if p.ends_with("/status") => (200, answered(r)),
            ("POST", _) => (201, r.body.clone().unwrap_or(json!({}))),
            _ => (500, status(500, "unexpected")),
        }
    }));
    let ctx = Arc::new(Context::new(
        api.client.clone(),
        Arc::new(Metrics::default()),
    ));
    reconcile(Arc::new(cert(self_signed(), None)), ctx)
        .await
        .unwrap();
    let lines: Vec<String> = api.take().iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "GET /api/v1/namespaces/prod/secrets/web-tls",
            "PATCH /api/v1/namespaces/prod/secrets/web-tls?&force=true&fieldManager=berth",
            "POST /apis/events.k8s.io/v1/namespaces/prod/events?",
            "PATCH /apis/berth.dev/v1alpha1/namespaces/prod/certificates/web/status?&force=true&fieldManager=berth",
        ]
    );
    let s = secret_body.lock().unwrap().clone().unwrap();
    assert_eq!(s["type"], "kubernetes.io/tls");
    assert_eq!(s["metadata"]["labels"]["berth.dev/certificate"], "web");
    assert!(s["metadata"]["ownerReferences"].is_null());
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(s["data"][k].is_string(), "{k}");
    }
}

#[tokio::test]
async fn up_to_date_certificate_costs_one_read_and_no_write() {
    // First reconcile issues; its Secret and status are then served back.
    let store = Arc::new(Mutex::new((None::<Value>, None::<Value>)));
    let s2 = store.clone();
    let api = mock_api(Arc::new(move |r: &Recorded| {
        let mut st = s2.lock().unwrap();
        match (r.method.as_str(), r.path()) {
            ("GET", "/api/v1/namespaces/prod/secrets/web-tls") => match &st.0 {
                Some(s) => (200, s.clone()),
                None => (404, status(404, "NotFound")),
            },
            ("PATCH", "/api/v1/namespaces/prod/secrets/web-tls") => {
                st.0 = r.body.clone();
                (200, r.body.clone().unwrap())
            }
            ("PATCH", p) if p.ends_with("/status") => {
                st.1 = r.body.as_ref().map(|b| b["status"].clone());
                (200, answered(r))
            }
            ("POST", _) => (201, r.body.clone().unwrap_or(json!({}))),
            _ => (500, status(500, "unexpected")),
        }
    }));
    let ctx = Arc::new(Context::new(
        api.client.clone(),
        Arc::new(Metrics::default()),
    ));
    reconcile(Arc::new(cert(self_signed(), None)), ctx.clone())
        .await
        .unwrap();
    api.take();
    let status_now = store.lock().unwrap().1.clone();
    reconcile(Arc::new(cert(self_signed(), status_now)), ctx)
        .await
        .unwrap();
    let lines: Vec<String> = api.take().iter().map(|r| r.line()).collect();
    assert_eq!(lines, ["GET /api/v1/namespaces/prod/secrets/web-tls"]);
}

#[tokio::test]
async fn acme_applies_the_cron_job_and_starts_the_first_job() {
    let api = mock_api(Arc::new(|r: &Recorded| {
        match (r.method.as_str(), r.path()) {
            ("GET", "/api/v1/namespaces/prod/secrets/web-tls") => (404, status(404, "NotFound")),
            ("PATCH", _) => (200, answered(r)),
            ("POST", _) => (201, r.body.clone().unwrap_or(json!({}))),
            _ => (500, status(500, "unexpected")),
        }
    }));
    let mut ctx = Context::new(api.client.clone(), Arc::new(Metrics::default()));
    ctx.jobs.ingress_class = Some("nginx".into());
    let ctx = Arc::new(ctx);
    let spec = json!({"secretName": "web-tls", "dnsNames": ["web.example.test"], "issuer": {"acme": {"email": "ops@example.test"}}});
    reconcile(Arc::new(cert(spec, None)), ctx).await.unwrap();
    let reqs = api.take();
    let lines: Vec<String> = reqs.iter().map(|r| r.line()).collect();
    let apply = "?&force=true&fieldManager=berth";
    assert_eq!(
        lines,
        [
            "GET /api/v1/namespaces/prod/secrets/web-tls".to_string(),
            format!("PATCH /api/v1/namespaces/prod/serviceaccounts/web-renew{apply}"),
            format!("PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/prod/roles/web-renew{apply}"),
            format!("PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/prod/rolebindings/web-renew{apply}"),
            format!("PATCH /apis/batch/v1/namespaces/prod/cronjobs/web-renew{apply}"),
            "POST /apis/batch/v1/namespaces/prod/jobs?".into(),
            format!("PATCH /apis/berth.dev/v1alpha1/namespaces/prod/certificates/web/status{apply}"),
        ]
    );
    // The renewer account: owned by the Certificate, a Role with exactly what
    // `berth cert renew --kube` does, by name where RBAC allows it, bound to the account.
    for r in &reqs[1..4] {
        let b = r.body.as_ref().unwrap();
        assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "Certificate");
        assert_eq!(b["metadata"]["ownerReferences"][0]["name"], "web");
    }
    let account = "berth-acme-account-".to_string()
        + &berth::backup::kube::value_hash(
            "https://acme-v02.api.letsencrypt.org/directory\nops@example.test",
        );
    assert_eq!(
        reqs[2].body.as_ref().unwrap()["rules"],
        json!([
            {"apiGroups": ["berth.dev"], "resources": ["certificates"], "verbs": ["get"], "resourceNames": ["web"]},
            {"apiGroups": ["berth.dev"], "resources": ["certificates/status"], "verbs": ["get", "patch"], "resourceNames": ["web"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "patch"], "resourceNames": ["web-tls", account]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "patch", "delete"], "resourceNames": ["web-acme-solver"]},
            {"apiGroups": [""], "resources": ["services"], "verbs": ["create"]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["get", "patch", "delete"], "resourceNames": ["web-acme-solver"]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["create"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
        ])
    );
    let binding = reqs[3].body.as_ref().unwrap();
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "web-renew"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "web-renew", "namespace": "prod"}])
    );
    let reqs = &reqs[3..];
    let cj = reqs[1].body.as_ref().unwrap();
    assert_eq!(cj["spec"]["schedule"], "17 3 * * *");
    assert_eq!(cj["metadata"]["ownerReferences"][0]["kind"], "Certificate");
    let job = reqs[2].body.as_ref().unwrap();
    assert!(job["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("web-issue-"));
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        json!([
            "cert",
            "renew",
            "--kube",
            "--namespace",
            "prod",
            "--name",
            "web",
            "--ingress-class=nginx",
            "--now"
        ])
    );
    let pod = &job["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["berth.dev/acme-solver"],
        "web-acme-solver"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "web-renew");
    assert_eq!(
        pod["spec"]["containers"][0]["ports"][0]["containerPort"],
        8089
    );
    let st = &reqs[3].body.as_ref().unwrap()["status"];
    let issuing = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Issuing")
        .unwrap();
    assert_eq!(issuing["status"], "True");
}

/// A resync of an ACME Certificate whose issuance is under way (its Job exists) reads the
/// Secret and nothing else: the renewer account and CronJob are not applied again, no Job is
/// created again, the unchanged status not written.
#[tokio::test]
async fn acme_resync_while_issuing_reads_only_the_secret() {
    let written = Arc::new(Mutex::new(None::<Value>));
    let w2 = written.clone();
    let api = mock_api(Arc::new(move |r: &Recorded| {
        match (r.method.as_str(), r.path()) {
            ("GET", "/api/v1/namespaces/prod/secrets/web-tls") => (404, status(404, "NotFound")),
            ("PATCH", p) if p.ends_with("/status") => {
                *w2.lock().unwrap() = r.body.as_ref().map(|b| b["status"].clone());
                (200, answered(r))
            }
            ("PATCH", _) => (200, answered(r)),
            ("POST", _) => (201, r.body.clone().unwrap_or(json!({}))),
            _ => (500, status(500, "unexpected")),
        }
    }));
    let (jobs, mut job_writer) = kube::runtime::reflector::store();
    let mut ctx = Context::new(api.client.clone(), Arc::new(Metrics::default()));
    ctx.jobs.ingress_class = Some("nginx".into());
    ctx.job_cache = Some(jobs);
    let ctx = Arc::new(ctx);
    let spec = json!({"secretName": "web-tls", "dnsNames": ["web.example.test"], "issuer": {"acme": {"email": "ops@example.test"}}});
    reconcile(Arc::new(cert(spec.clone(), None)), ctx.clone())
        .await
        .unwrap();
    let first = api.take();
    let job = first
        .iter()
        .find(|r| r.method == "POST" && r.path().ends_with("/jobs"))
        .and_then(|r| r.body.clone())
        .expect("the first issuance Job");
    // The Job watch sees the Job; the Certificate carries the status written.
    job_writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
        serde_json::from_value(job).unwrap(),
    ));
    let status_now = written.lock().unwrap().clone();
    reconcile(Arc::new(cert(spec, status_now)), ctx)
        .await
        .unwrap();
    let lines: Vec<String> = api.take().iter().map(|r| r.line()).collect();
    assert_eq!(lines, ["GET /api/v1/namespaces/prod/secrets/web-tls"]);
}

/// The labelled Secrets' metadata as the controller's watch keeps it.
fn secret_meta(resource_version: &str) -> kube::core::PartialObjectMeta<Secret> {
    kube::core::ObjectMeta {
        name: Some("web-tls".into()),
        namespace: Some("prod".into()),
        resource_version: Some(resource_version.into()),
        labels: Some([("berth.dev/certificate".to_string(), "web".to_string())].into()),
        ..Default::default()
    }
    .into_response_partial::<Secret>()
}

/// With the watch of labelled Secrets running, a resync of an issued Certificate whose Secret
/// is unchanged (same resourceVersion in the watch cache as when berth last read or wrote it)
/// sends no request at all; a changed Secret is read once; a deleted one is issued again.
#[tokio::test]
async fn an_unchanged_secret_is_not_read_again_while_its_watch_shows_it_unchanged() {
    let store = Arc::new(Mutex::new((None::<Value>, None::<Value>)));
    let s2 = store.clone();
    let api = mock_api(Arc::new(move |r: &Recorded| {
        let mut st = s2.lock().unwrap();
        match (r.method.as_str(), r.path()) {
            ("GET", "/api/v1/namespaces/prod/secrets/web-tls") => match &st.0 {
                Some(s) => (200, s.clone()),
                None => (404, status(404, "NotFound")),
            },
            ("PATCH", "/api/v1/namespaces/prod/secrets/web-tls") => {
                let mut b = r.body.clone().unwrap();
                b["metadata"]["resourceVersion"] = json!("5");
                st.0 = Some(b.clone());
                (200, b)
            }
            ("PATCH", p) if p.ends_with("/status") => {
                st.1 = r.body.as_ref().map(|b| b["status"].clone());
                (200, answered(r))
            }
            ("POST", _) => (201, r.body.clone().unwrap_or(json!({}))),
            _ => (500, status(500, "unexpected")),
        }
    }));
    let (secrets, mut secret_writer) = kube::runtime::reflector::store();
    let mut ctx = Context::new(api.client.clone(), Arc::new(Metrics::default()));
    ctx.secret_cache = Some(secrets);
    ctx.secrets_synced.set();
    let ctx = Arc::new(ctx);
    reconcile(Arc::new(cert(self_signed(), None)), ctx.clone())
        .await
        .unwrap();
    let first: Vec<String> = api.take().iter().map(|r| r.line()).collect();
    assert_eq!(
        first[1],
        "PATCH /api/v1/namespaces/prod/secrets/web-tls?&force=true&fieldManager=berth"
    );
    // The watch delivers the Secret berth wrote.
    secret_writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(secret_meta("5")));
    let status_now = store.lock().unwrap().1.clone();
    let issued = cert(self_signed(), status_now);
    for _ in 0..2 {
        reconcile(Arc::new(issued.clone()), ctx.clone())
            .await
            .unwrap();
        assert_eq!(api.take().len(), 0, "an unchanged Secret is not read");
    }
    // Someone changed the Secret (same pair, new resourceVersion): read once, then not again.
    store.lock().unwrap().0.as_mut().unwrap()["metadata"]["resourceVersion"] = json!("6");
    secret_writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(secret_meta("6")));
    reconcile(Arc::new(issued.clone()), ctx.clone())
        .await
        .unwrap();
    let lines: Vec<String> = api.take().iter().map(|r| r.line()).collect();
    assert_eq!(lines, ["GET /api/v1/namespaces/prod/secrets/web-tls"]);
    reconcile(Arc::new(issued.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(api.take().len(), 0);
    // Deleted: the watch drops it, the next reconcile reads it (404) and issues again.
    store.lock().unwrap().0 = None;
    secret_writer.apply_watcher_event(&kube::runtime::watcher::Event::Delete(secret_meta("6")));
    reconcile(Arc::new(issued), ctx).await.unwrap();
    let lines: Vec<String> = api.take().iter().map(|r| r.line()).collect();
    assert_eq!(
        &lines[..2],
        [
            "GET /api/v1/namespaces/prod/secrets/web-tls",
            "PATCH /api/v1/namespaces/prod/secrets/web-tls?&force=true&fieldManager=berth",
        ]
    );
}

/// An ACME Certificate waiting for its first issuance, with the watch of labelled Secrets
/// running: the Secret found absent is not read again on the next resync (for at most an
/// hour, or until the watch shows it): an idle resync sends nothing.
#[tokio::test]
async fn acme_resync_while_issuing_sends_nothing_with_the_secret_watch() {
    let written = Arc::new(Mutex::new(None::<Value>));
    let w2 = written.clone();
    let api = mock_api(Arc::new(move |r: &Recorded| {
        match (r.method.as_str(), r.path()) {
            ("GET", "/api/v1/namespaces/prod/secrets/web-tls") => (404, status(404, "NotFound")),
            ("PATCH", p) if p.ends_with("/status") => {
                *w2.lock().unwrap() = r.body.as_ref().map(|b| b["status"].clone());
                (200, answered(r))
            }
            ("PATCH", _) => (200, answered(r)),
            ("POST", _) => (201, r.body.clone().unwrap_or(json!({}))),
            _ => (500, status(500, "unexpected")),
        }
    }));
    let (jobs, mut job_writer) = kube::runtime::reflector::store();
    let (secrets, _secret_writer) = kube::runtime::reflector::store();
    let mut ctx = Context::new(api.client.clone(), Arc::new(Metrics::default()));
    ctx.jobs.ingress_class = Some("nginx".into());
    ctx.job_cache = Some(jobs);
    ctx.secret_cache = Some(secrets);
    ctx.secrets_synced.set();
    let ctx = Arc::new(ctx);
    let spec = json!({"secretName": "web-tls", "dnsNames": ["web.example.test"], "issuer": {"acme": {"email": "ops@example.test"}}});
    reconcile(Arc::new(cert(spec.clone(), None)), ctx.clone())
        .await
        .unwrap();
    let first = api.take();
    assert_eq!(
        first[0].line(),
        "GET /api/v1/namespaces/prod/secrets/web-tls"
    );
    let job = first
        .iter()
        .find(|r| r.method == "POST" && r.path().ends_with("/jobs"))
        .and_then(|r| r.body.clone())
        .expect("the first issuance Job");
    job_writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
        serde_json::from_value(job).unwrap(),
    ));
    let status_now = written.lock().unwrap().clone();
    let issuing = cert(spec, status_now);
    reconcile(Arc::new(issuing.clone()), ctx.clone())
        .await
        .unwrap();
    let lines: Vec<String> = api.take().iter().map(|r| r.line()).collect();
    assert_eq!(lines, Vec::<String>::new());
    // The Secret watch failing (its list is gone): memory is not trusted, the Secret is read.
    ctx.secrets_synced.clear();
    reconcile(Arc::new(issuing), ctx).await.unwrap();
    let lines: Vec<String> = api.take().iter().map(|r| r.line()).collect();
    assert_eq!(lines, ["GET /api/v1/namespaces/prod/secrets/web-tls"]);
}
