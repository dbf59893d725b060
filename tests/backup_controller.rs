//! The Backup controller and a Backup that does not deserialize (a field of the wrong type, as
//! an object written while the CRD's validation was bypassed, or by an older CRD, can hold).
//!
//! The watch delivers `DeserializeGuard<Backup>`, so such an object neither fails the list nor
//! stops the controller's stream; `reconcile_guarded` gives it a Warning Event `InvalidObject`,
//! applies nothing, and waits for a change, and the same controller context then reconciles a
//! valid Backup next to it as usual. Against kube's client over a mocked API server that records
//! every request (tests/support/kube_mock.rs), like tests/worker_autoscale.rs does for Workers.

#[path = "support/kube_mock.rs"]
mod kube_mock;

use std::sync::Arc;

use berth::api::Backup;
use berth::backup::kube::controller::{reconcile_guarded, Context, Metrics};
use kube::core::{DeserializeGuard, ObjectList};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use kube_mock::{mock_api, status, Recorded};

fn backup(name: &str) -> Value {
    json!({
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}"), "generation": 1},
        "spec": {
            "schedule": "0 2 * * *",
            "database": {"urlSecretRef": {"name": "db", "key": "url"}},
            "destination": {"volume": {"size": "1Gi"}},
            "retention": {"keepLast": 7}
        }
    })
}

/// The good Backup as the API server holds it; `bad` has `retention.keepLast: "seven"`.
fn objects() -> (Value, Value) {
    let good = backup("nightly");
    let mut bad = backup("broken");
    bad["spec"]["retention"]["keepLast"] = json!("seven");
    (good, bad)
}

/// An API server that accepts every write (echoing it, the status patch answered with the
/// object), lists nothing and finds no single object.
fn responder(good: Value) -> Arc<kube_mock::Responder> {
    Arc::new(move |r: &Recorded| {
        let path = r.path();
        match r.method.as_str() {
            "PATCH" if path.ends_with("/status") => {
                let mut o = good.clone();
                o["status"] = r.body.as_ref().map_or(Value::Null, |b| b["status"].clone());
                (200, o)
            }
            "PATCH" | "POST" | "PUT" => (200, r.body.clone().unwrap_or(Value::Null)),
            "GET" if path.ends_with('s') => (
                200,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}),
            ),
            _ => (404, status(404, "NotFound")),
        }
    })
}

fn writes_to(requests: &[Recorded], name: &str) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.is_write() && !r.path().contains("/events"))
        .filter(|r| r.path().split('/').any(|part| part == name))
        .map(Recorded::line)
        .collect()
}

#[tokio::test]
async fn a_backup_that_does_not_deserialize_gets_an_event_and_the_next_one_is_reconciled() {
    let (good, bad) = objects();

    // The watch's list holds both: with the guard, the list itself still reads.
    let listed: ObjectList<DeserializeGuard<Backup>> = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BackupList", "metadata": {},
        "items": [bad.clone(), good.clone()],
    }))
    .expect("a list with an invalid Backup still deserializes");
    assert!(listed.items[0].0.is_err(), "the guard holds the error");
    assert!(listed.items[1].0.is_ok());
    let err = listed.items[0].0.as_ref().unwrap_err().error.clone();
    assert!(err.contains("seven"), "{err}");

    let api = mock_api(responder(good.clone()));
    let ctx = Arc::new(Context::new(
        api.client.clone(),
        Arc::new(Metrics::default()),
        "berth:test".into(),
    ));
    let mut items = listed.items.into_iter();
    let (broken, nightly) = (items.next().unwrap(), items.next().unwrap());

    // The invalid one: a Warning Event, nothing applied, wait for a change.
    let action = reconcile_guarded(Arc::new(broken), ctx.clone())
        .await
        .expect("an invalid object is not a reconcile error (which would be retried)");
    assert_eq!(action, Action::await_change());
    let requests = api.take();
    let events: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path().ends_with("/events"))
        .collect();
    assert_eq!(
        events.len(),
        1,
        "{:?}",
        requests.iter().map(Recorded::line).collect::<Vec<_>>()
    );
    let ev = events[0].body.as_ref().unwrap();
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "InvalidObject");
    assert_eq!(ev["regarding"]["kind"], "Backup");
    assert_eq!(ev["regarding"]["name"], "broken");
    let note = ev["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("fix it so it matches the Backup CRD"),
        "{note}"
    );
    let writes: Vec<String> = requests
        .iter()
        .filter(|r| r.is_write() && !r.path().ends_with("/events"))
        .map(Recorded::line)
        .collect();
    assert!(
        writes.is_empty(),
        "nothing is applied for an invalid Backup: {writes:?}"
    );

    // The valid one next to it, by the same context: CronJob and status as usual.
    reconcile_guarded(Arc::new(nightly), ctx.clone())
        .await
        .expect("the valid Backup reconciles");
    let requests = api.take();
    let lines: Vec<String> = requests.iter().map(Recorded::line).collect();
    let cron = requests
        .iter()
        .find(|r| {
            r.method == "PATCH" && r.path() == "/apis/batch/v1/namespaces/prod/cronjobs/nightly"
        })
        .unwrap_or_else(|| panic!("no CronJob applied for the valid Backup: {lines:?}"));
    assert_eq!(cron.body.as_ref().unwrap()["spec"]["schedule"], "0 2 * * *");
    let st = requests
        .iter()
        .find(|r| {
            r.method == "PATCH"
                && r.path() == "/apis/berth.dev/v1alpha1/namespaces/prod/backups/nightly/status"
        })
        .unwrap_or_else(|| panic!("no status written for the valid Backup: {lines:?}"));
    assert_eq!(st.body.as_ref().unwrap()["status"]["observedGeneration"], 1);
    assert!(writes_to(&requests, "broken").is_empty(), "{lines:?}");
    println!("requests for the valid Backup: {lines:#?}");
}
