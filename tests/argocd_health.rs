//! The Argo CD health checks (charts/berth/files/argocd/health.yaml, the `resource.customizations`
//! snippet users paste) run by a real Lua interpreter (Debian's lua5.4, as Argo CD runs gopher-lua
//! 5.1-compatible scripts, so the scripts use nothing newer) against recorded status objects of
//! each kind (tests/argocd/health-cases.json) and statuses made by berth's own Backup status code.

use std::collections::BTreeMap;

use serde_json::{json, Value};

#[path = "support/argocd.rs"]
mod argocd;
use argocd::{checks, health, repo};

#[test]
fn the_four_kinds_have_the_same_checked_script() {
    let c = checks();
    let kinds: Vec<&str> = c
        .keys()
        .map(|k| k.trim_start_matches("resource.customizations.health.berth.dev_"))
        .collect();
    assert_eq!(kinds, ["AppStack", "Backup", "Certificate", "Worker"]);
    // docs/gitops.md shows the same snippet users paste.
    let doc = std::fs::read_to_string(repo().join("docs/gitops.md")).unwrap();
    let snippet =
        std::fs::read_to_string(repo().join("charts/berth/files/argocd/health.yaml")).unwrap();
    let body: String = snippet
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        doc.contains(&body),
        "docs/gitops.md must contain charts/berth/files/argocd/health.yaml"
    );
}

#[test]
fn recorded_objects_of_each_kind() {
    let cases: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/argocd/health-cases.json")).unwrap(),
    )
    .unwrap();
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for case in &cases {
        let (status, message) = health(&case["object"]);
        let name = case["name"].as_str().unwrap();
        assert_eq!(
            status,
            case["expect"].as_str().unwrap(),
            "{name}: {message}"
        );
        let contains = case["messageContains"].as_str().unwrap();
        assert!(
            message.contains(contains),
            "{name}: message {message:?} lacks {contains:?}"
        );
        println!("{name:28} {status:12} {message}");
        *seen
            .entry((case["object"]["kind"].as_str().unwrap().to_string(), status))
            .or_default() += 1;
    }
    for kind in ["AppStack", "Worker", "Certificate", "Backup"] {
        for status in ["Healthy", "Progressing", "Degraded"] {
            assert!(
                seen.contains_key(&(kind.to_string(), status.to_string())),
                "no recorded {kind} that is {status}"
            );
        }
    }
}

fn backup(generation: i64) -> berth::api::Backup {
    serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Backup",
        "metadata": {"name": "shop", "namespace": "shop", "generation": generation},
        "spec": {"schedule": "0 2 * * *", "database": {"appStackRef": "shop"},
                 "destination": {"volume": {"size": "1Gi"}}}
    }))
    .unwrap()
}

fn with_status(b: &berth::api::Backup, st: berth::api::BackupStatus) -> Value {
    let mut v = serde_json::to_value(b).unwrap();
    v["status"] = serde_json::to_value(st).unwrap();
    v
}

#[test]
fn statuses_made_by_the_backup_controller() {
    use berth::backup::report::{blocked_status, status_from_jobs, ObservedJob, RunReport};
    let now = chrono::Utc::now();
    let b = backup(2);
    // Blocked (the AppStack does not exist): Degraded with the controller's message.
    let st = blocked_status(
        &b,
        "AppStackNotFound",
        "AppStack \"shop\" does not exist".into(),
        None,
        now,
    );
    let (status, message) = health(&with_status(&b, st));
    assert_eq!(status, "Degraded");
    assert!(message.contains("does not exist"), "{message}");

    let job = |active: bool,
               succeeded: bool,
               failed: bool,
               report: Option<RunReport>,
               failure: Option<String>| ObservedJob {
        name: "shop-now-1".into(),
        created: Some(now),
        completed: (!active).then_some(now),
        active,
        succeeded,
        failed,
        failure,
        report,
    };
    // A Job running, no backup yet: Progressing.
    let st = status_from_jobs(&b, &[job(true, false, false, None, None)], None, now);
    assert_eq!(health(&with_status(&b, st)).0, "Progressing");
    // A Job that succeeded with a report: Healthy.
    let record: berth::api::backup::BackupRecord = serde_json::from_value(json!({
        "name": "shop-20261201T020000Z.dump.zst", "sizeBytes": 10, "sha256": "ab"
    }))
    .unwrap();
    let ok = RunReport {
        backup: Some(record.clone()),
        backups: vec![record],
        error: None,
    };
    let st = status_from_jobs(&b, &[job(false, true, false, Some(ok), None)], None, now);
    assert_eq!(health(&with_status(&b, st.clone())).0, "Healthy");
    // The same status before berth saw a new generation: Progressing.
    assert_eq!(health(&with_status(&backup(3), st)).0, "Progressing");
    // A failed Job: Degraded with the report's error.
    let bad = RunReport {
        backup: None,
        backups: vec![],
        error: Some("cannot connect to postgres://shop@db/shop".into()),
    };
    let st = status_from_jobs(
        &b,
        &[job(
            false,
            false,
            true,
            Some(bad),
            Some("cannot connect".into()),
        )],
        None,
        now,
    );
    let (status, message) = health(&with_status(&b, st));
    assert_eq!(status, "Degraded");
    assert!(message.contains("cannot connect"), "{message}");
}
