//! Builders and status are checked directly; the controller against kube's client over a mocked
//! HTTP service, asserting each request's method, path and body, in [`controller`].

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use http::{Request, Response};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

use super::controller::{reconcile, Context, Metrics};
use super::*;
use crate::api::backup::BackupRecord;
use crate::api::{Backup, BackupStatus};
use crate::backup::report::*;

mod controller;

fn backup(extra: Value) -> Backup {
    let mut v = json!({
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": "vidgen", "namespace": "prod", "uid": "u-1", "generation": 2},
        "spec": {
            "schedule": "0 2 * * *",
            "timeZone": "Europe/Berlin",
            "database": {"urlSecretRef": {"name": "db", "key": "url"}},
            "destination": {"volume": {"size": "20Gi"}},
            "retention": {"keepLast": 7, "maxAge": "30d"},
            "verify": true
        }
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn inputs() -> JobInputs {
    JobInputs {
        image: "berth:test".into(),
        dump_image: "postgres:17".into(),
        database_url: SecretKeyRef {
            name: "db".into(),
            key: "url".into(),
        },
        stack: None,
    }
}

#[test]
fn cron_job_from_spec() {
    let b = backup(json!({}));
    let cj = cron_job(&b, &inputs());
    let v = serde_json::to_value(&cj).unwrap();
    assert_eq!(v["metadata"]["name"], "vidgen");
    assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "Backup");
    assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
    let spec = &v["spec"];
    assert_eq!(spec["schedule"], "0 2 * * *");
    assert_eq!(spec["timeZone"], "Europe/Berlin");
    assert_eq!(spec["suspend"], false);
    assert_eq!(spec["concurrencyPolicy"], "Forbid");
    assert_eq!(spec["successfulJobsHistoryLimit"], 3);
    assert_eq!(spec["failedJobsHistoryLimit"], 3);
    assert_eq!(
        spec["jobTemplate"]["metadata"]["labels"][BACKUP_LABEL],
        "vidgen"
    );
    let job = &spec["jobTemplate"]["spec"];
    assert_eq!(job["activeDeadlineSeconds"], ACTIVE_DEADLINE_SECONDS);
    assert_eq!(job["backoffLimit"], 0);
    let pod = &job["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    // berth's image bundles berth into an emptyDir; the PostgreSQL image runs it, so the dump
    // is made by that image's pg_dump.
    let init = &pod["initContainers"][0];
    assert_eq!(init["image"], "berth:test");
    assert_eq!(init["args"], json!(["backup", "bundle", "--to", "/berth"]));
    assert_eq!(
        init["volumeMounts"],
        json!([{"name": "berth", "mountPath": "/berth"}])
    );
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "postgres:17");
    assert_eq!(
        c["command"],
        json!(["/berth/ld.so", "--library-path", "/berth", "/berth/berth"])
    );
    assert_eq!(c["securityContext"]["runAsUser"], 999);
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["securityContext"]["fsGroup"], 999);
    assert_eq!(
        c["args"],
        json!([
            "backup",
            "run",
            "--to",
            "/backups",
            "--format",
            "custom",
            "--compression",
            "zstd",
            "--name-prefix",
            "vidgen",
            "--report",
            "/dev/termination-log",
            "--keep-last",
            "7",
            "--max-age",
            "30d",
            "--verify"
        ])
    );
    assert_eq!(
        c["env"],
        json!([{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}])
    );
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "berth", "mountPath": "/berth"}, {"name": "backups", "mountPath": "/backups"}])
    );
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(
        pod["volumes"],
        json!([{"name": "berth", "emptyDir": {}}, {"name": "backups", "persistentVolumeClaim": {"claimName": "vidgen-backups"}}])
    );
    let claim = serde_json::to_value(pvc(&b).unwrap()).unwrap();
    assert_eq!(claim["metadata"]["name"], "vidgen-backups");
    // The backups outlive the Backup and its AppStack: no owner, so no garbage collection.
    assert!(
        claim["metadata"].get("ownerReferences").is_none(),
        "{claim}"
    );
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "20Gi");
}

#[test]
fn s3_destination_and_stack_labels() {
    let b = backup(json!({"spec": {
        "suspend": true,
        "destination": {"volume": null, "s3": {"bucket": "backups", "prefix": "vidgen/", "endpoint": "http://minio:9000", "credentialsSecretRef": {"name": "s3"}}},
        "format": "plain", "compression": "gzip", "retention": {"keepLast": 3, "maxAge": null}, "verify": false
    }}));
    assert!(pvc(&b).is_none());
    let mut i = inputs();
    i.stack = Some("vidgen".into());
    let v = serde_json::to_value(cron_job(&b, &i)).unwrap();
    assert_eq!(v["spec"]["suspend"], true);
    let c = &v["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["args"],
        json!([
            "backup",
            "run",
            "--to",
            "s3://backups/vidgen",
            "--format",
            "plain",
            "--compression",
            "gzip",
            "--name-prefix",
            "vidgen",
            "--report",
            "/dev/termination-log",
            "--keep-last",
            "3"
        ])
    );
    let names: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "DATABASE_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL"
        ]
    );
    assert_eq!(c["env"][1]["valueFrom"]["secretKeyRef"]["name"], "s3");
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "berth", "mountPath": "/berth"}])
    );
    let labels = &v["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["berth.dev/stack"], "vidgen");
    assert_eq!(labels["app.kubernetes.io/component"], "backup");
}

fn record(name: &str) -> BackupRecord {
    BackupRecord {
        name: name.into(),
        time: Some("2026-11-22T02:00:00Z".into()),
        size_bytes: 1234,
        duration_seconds: 1.5,
        sha256: "ab".repeat(32),
        verified: true,
    }
}

fn t(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, h, m, 0).unwrap()
}

fn job(
    name: &str,
    created: DateTime<Utc>,
    outcome: Option<bool>,
    done: Option<DateTime<Utc>>,
) -> Job {
    let cond = |type_: &str, at: DateTime<Utc>, message: Option<&str>| JobCondition {
        type_: type_.into(),
        status: "True".into(),
        last_transition_time: Some(to_time(at)),
        message: message.map(str::to_string),
        ..JobCondition::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("prod".into()),
            creation_timestamp: Some(to_time(created)),
            labels: Some([(BACKUP_LABEL.to_string(), "vidgen".to_string())].into()),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(match outcome {
            None => JobStatus {
                active: Some(1),
                ..JobStatus::default()
            },
            Some(true) => JobStatus {
                succeeded: Some(1),
                completion_time: done.map(to_time),
                conditions: Some(vec![cond("Complete", done.unwrap(), None)]),
                ..JobStatus::default()
            },
            Some(false) => JobStatus {
                failed: Some(1),
                conditions: Some(vec![cond(
                    "Failed",
                    done.unwrap(),
                    Some("BackoffLimitExceeded"),
                )]),
                ..JobStatus::default()
            },
        }),
    }
}

fn pod(job: &str, report: &RunReport) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{job}-x")),
            labels: Some([("batch.kubernetes.io/job-name".to_string(), job.to_string())].into()),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "backup".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        message: Some(report.to_message()),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn ready(st: &BackupStatus) -> &Condition {
    st.conditions.iter().find(|c| c.type_ == "Ready").unwrap()
}
fn progressing(st: &BackupStatus) -> &Condition {
    st.conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap()
}

#[test]
fn status_from_jobs_cases() {
    let b = backup(json!({}));
    let now = t(12, 0);
    // No job yet: Ready Unknown.
    let st = status_from_jobs(&b, &[], None, now);
    assert_eq!(
        (ready(&st).status.as_str(), ready(&st).reason.as_str()),
        ("Unknown", "NoBackupYet")
    );
    assert_eq!(st.observed_generation, Some(2));
    assert_eq!(st.last_schedule_time, None);

    // A success with its report.
    let ok_report = RunReport {
        backup: Some(record("vidgen-1.dump.zst")),
        backups: vec![record("vidgen-1.dump.zst"), record("vidgen-0.dump.zst")],
        error: None,
    };
    let j1 = job("vidgen-1", t(2, 0), Some(true), Some(t(2, 1)));
    let jobs = vec![observe(&j1, &[pod("vidgen-1", &ok_report)])];
    let st = status_from_jobs(&b, &jobs, None, now);
    assert_eq!(ready(&st).status, "True");
    assert!(
        ready(&st).message.contains("vidgen-1.dump.zst"),
        "{}",
        ready(&st).message
    );
    assert_eq!(st.last_backup, ok_report.backup);
    assert_eq!(st.backups, ok_report.backups);
    assert_eq!(st.last_schedule_time, Some(to_time(t(2, 0))));
    assert_eq!(st.last_successful_time, Some(to_time(t(2, 1))));
    assert_eq!(progressing(&st).status, "False");
    // The same jobs again give an equal status (so nothing is written).
    assert_eq!(status_from_jobs(&b, &jobs, Some(&st), t(13, 0)), st);

    // A later failure with its error: Ready False, the last good backup kept.
    let fail_report = RunReport {
        error: Some("pg_dump failed (exit status: 1): server closed the connection".into()),
        ..RunReport::default()
    };
    let j2 = job("vidgen-2", t(3, 0), Some(false), Some(t(3, 2)));
    let jobs2 = vec![
        jobs[0].clone(),
        observe(&j2, &[pod("vidgen-2", &fail_report)]),
    ];
    let st2 = status_from_jobs(&b, &jobs2, Some(&st), now);
    assert_eq!(
        (ready(&st2).status.as_str(), ready(&st2).reason.as_str()),
        ("False", "BackupFailed")
    );
    assert!(
        ready(&st2).message.contains("server closed the connection"),
        "{}",
        ready(&st2).message
    );
    assert_eq!(st2.last_backup, ok_report.backup);
    assert_eq!(st2.last_successful_time, Some(to_time(t(2, 1))));
    assert_eq!(st2.last_schedule_time, Some(to_time(t(3, 0))));
    assert_eq!(ready(&st2).last_transition_time, to_time(now));

    // A failure without a report falls back to the Job's condition; a running Job is Progressing.
    let j3 = job("vidgen-3", t(4, 0), None, None);
    let jobs3 = vec![observe(&j2, &[]), observe(&j3, &[])];
    let st3 = status_from_jobs(&b, &jobs3, Some(&st2), now);
    assert!(ready(&st3).message.contains("BackoffLimitExceeded"));
    assert_eq!(
        (
            progressing(&st3).status.as_str(),
            progressing(&st3).reason.as_str()
        ),
        ("True", "BackupRunning")
    );
    // Jobs removed by the history limit do not erase what was recorded.
    assert_eq!(st3.last_backup, ok_report.backup);
    assert_eq!(st3.last_schedule_time, Some(to_time(t(4, 0))));
}

#[test]
fn report_fits_a_termination_message() {
    let many = RunReport {
        backup: Some(record("b-new")),
        backups: (0..100)
            .map(|i| record(&format!("vidgen-{i:03}.dump.zst")))
            .collect(),
        error: None,
    };
    let m = many.to_message();
    assert!(m.len() <= REPORT_MAX_BYTES);
    let back: RunReport = serde_json::from_str(&m).unwrap();
    assert!(back.backups.len() > 5);
    assert_eq!(
        back.backups[0].name, "vidgen-000.dump.zst",
        "newest kept first"
    );
    let err = RunReport {
        error: Some("é".repeat(5000)),
        ..RunReport::default()
    };
    let m = err.to_message();
    assert!(m.len() <= REPORT_MAX_BYTES);
    assert!(serde_json::from_str::<RunReport>(&m).is_ok());
}

#[test]
fn backup_now_value_hash_is_stable() {
    let b =
        backup(json!({"metadata": {"annotations": {BACKUP_NOW_ANNOTATION: "2026-11-22T10:00"}}}));
    assert_eq!(backup_now_value(&b), Some("2026-11-22T10:00"));
    let j = now_job(&b, &inputs(), "2026-11-22T10:00");
    assert_eq!(
        j.metadata.name.as_deref(),
        Some(format!("vidgen-now-{}", value_hash("2026-11-22T10:00")).as_str())
    );
    assert_ne!(value_hash("a"), value_hash("b"));
    assert!(now_job_exists(&[j], "2026-11-22T10:00"));
    assert!(backup_now_value(&backup(json!({}))).is_none());
}

#[test]
fn dump_image_matches_the_server() {
    let b = backup(json!({}));
    // An in-stack PostgreSQL: its own image.
    assert_eq!(dump_image(&b, Some("postgres:15")), "postgres:15");
    // Unknown server (urlSecretRef, external): the newest pg_dump, which dumps older servers.
    assert_eq!(dump_image(&b, None), "postgres:18");
    let b = backup(json!({"spec": {"postgresVersion": "17"}}));
    assert_eq!(dump_image(&b, Some("postgres:15")), "postgres:17");
    let b = backup(json!({"spec": {"image": "registry.local/pg:18.1"}}));
    assert_eq!(dump_image(&b, None), "registry.local/pg:18.1");
}

#[test]
fn failed_reconciles_back_off_exponentially_up_to_the_resync() {
    use super::controller::retry_delay;
    let secs: Vec<u64> = (1..7).map(|n| retry_delay(n).as_secs()).collect();
    assert_eq!(secs, [30, 60, 120, 240, 480, 600]);
}
