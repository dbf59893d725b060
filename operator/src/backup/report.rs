//! Backend-neutral backup status: the [`RunReport`] a run leaves (a pod's termination message on
//! Kubernetes, the result of a `docker exec` run on the host), one finished or running run as an
//! [`ObservedJob`], and [`status_from_jobs`], which turns those into a Backup's status the same
//! way on both backends.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::{Deserialize, Serialize};

use crate::api::backup::BackupRecord;
use crate::api::{Backup, BackupStatus};

/// The most a termination message may hold.
pub const REPORT_MAX_BYTES: usize = 4096;

/// What `berth backup run --report` writes: the new backup and the kept ones, or the error.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<BackupRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RunReport {
    /// The JSON of the report within [`REPORT_MAX_BYTES`]: the oldest kept backups are left out
    /// first, then the error is shortened.
    pub fn to_message(&self) -> String {
        let mut r = self.clone();
        loop {
            let s = serde_json::to_string(&r).unwrap_or_default();
            if s.len() <= REPORT_MAX_BYTES {
                return s;
            }
            if r.backups.pop().is_some() {
                continue;
            }
            if let Some(e) = &mut r.error {
                let keep = e.len().saturating_sub(s.len() - REPORT_MAX_BYTES + 16);
                let mut cut = keep;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
                e.push('…');
                continue;
            }
            return s;
        }
    }
}

/// A chrono time as a Kubernetes `Time`.
pub fn to_time(t: DateTime<Utc>) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_millisecond(t.timestamp_millis())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// A Kubernetes `Time` as a chrono time.
pub fn from_time(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.0.as_millisecond()).unwrap_or_default()
}

/// One Job as the status sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedJob {
    pub name: String,
    pub created: Option<DateTime<Utc>>,
    pub completed: Option<DateTime<Utc>>,
    pub active: bool,
    pub succeeded: bool,
    pub failed: bool,
    /// Why it failed: the pod's report, else the Job's condition message.
    pub failure: Option<String>,
    pub report: Option<RunReport>,
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: Option<&BackupStatus>,
    now: DateTime<Utc>,
) -> Condition {
    // The transition time moves only when the status does, so an unchanged status is equal
    // to the previous one and is not written.
    let old = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    crate::status::condition_since(
        old,
        type_,
        status,
        reason,
        message,
        generation,
        to_time(now),
    )
}

/// The status of a Backup from its Jobs: the newest successful Job's report gives the last
/// backup and the kept ones; the newest finished Job decides Ready; an active Job makes it
/// Progressing. Values the Jobs no longer show (removed by the history limit) are kept from
/// `previous`.
pub fn status_from_jobs(
    backup: &Backup,
    jobs: &[ObservedJob],
    previous: Option<&BackupStatus>,
    now: DateTime<Utc>,
) -> BackupStatus {
    let generation = backup.metadata.generation;
    let mut st = BackupStatus {
        observed_generation: generation,
        ..previous.cloned().unwrap_or_default()
    };
    let newest_created = jobs.iter().filter_map(|j| j.created).max();
    if let Some(t) = newest_created {
        if st
            .last_schedule_time
            .as_ref()
            .is_none_or(|p| from_time(p) < t)
        {
            st.last_schedule_time = Some(to_time(t));
        }
    }
    let last_success = jobs
        .iter()
        .filter(|j| j.succeeded)
        .max_by_key(|j| j.completed.or(j.created));
    if let Some(j) = last_success {
        let t = j.completed.or(j.created);
        if let Some(t) = t {
            if st
                .last_successful_time
                .as_ref()
                .is_none_or(|p| from_time(p) <= t)
            {
                st.last_successful_time = Some(to_time(t));
                if let Some(r) = &j.report {
                    st.last_backup = r.backup.clone();
                    st.backups = r.backups.clone();
                }
            }
        }
    }
    let last_finished = jobs
        .iter()
        .filter(|j| j.succeeded || j.failed)
        .max_by_key(|j| (j.completed.or(j.created), j.name.clone()));
    let ready = match last_finished {
        Some(j) if j.failed => condition(
            "Ready",
            "False",
            "BackupFailed",
            format!(
                "backup job {} failed: {}",
                j.name,
                j.failure.clone().unwrap_or_default()
            ),
            generation,
            previous,
            now,
        ),
        Some(j) => {
            let what = j
                .report
                .as_ref()
                .and_then(|r| r.backup.as_ref())
                .map(|b| {
                    format!(
                        "backup {} ({} bytes{})",
                        b.name,
                        b.size_bytes,
                        if b.verified {
                            ", verified by restore"
                        } else {
                            ""
                        }
                    )
                })
                .unwrap_or_else(|| format!("job {}", j.name));
            condition(
                "Ready",
                "True",
                "BackupSucceeded",
                format!("last run succeeded: {what}"),
                generation,
                previous,
                now,
            )
        }
        None => match previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == "Ready")) {
            Some(c) if c.reason != "NoBackupYet" => c.clone(),
            _ => condition(
                "Ready",
                "Unknown",
                "NoBackupYet",
                format!(
                    "no backup has run yet; the schedule is {:?} ({})",
                    backup.spec.schedule, backup.spec.time_zone
                ),
                generation,
                previous,
                now,
            ),
        },
    };
    let running: Vec<&str> = jobs
        .iter()
        .filter(|j| j.active)
        .map(|j| j.name.as_str())
        .collect();
    let progressing = if running.is_empty() {
        condition(
            "Progressing",
            "False",
            "Idle",
            if backup.spec.suspend {
                "suspended: no backup is scheduled".into()
            } else {
                "no backup is running".into()
            },
            generation,
            previous,
            now,
        )
    } else {
        condition(
            "Progressing",
            "True",
            "BackupRunning",
            format!("backup job {} is running", running.join(", ")),
            generation,
            previous,
            now,
        )
    };
    st.conditions = vec![ready, progressing];
    st
}

/// A Backup's status when it cannot be carried out (an AppStack without a database…).
pub fn blocked_status(
    backup: &Backup,
    reason: &str,
    message: String,
    previous: Option<&BackupStatus>,
    now: DateTime<Utc>,
) -> BackupStatus {
    let generation = backup.metadata.generation;
    let mut st = BackupStatus {
        observed_generation: generation,
        ..previous.cloned().unwrap_or_default()
    };
    st.conditions = vec![
        condition("Ready", "False", reason, message, generation, previous, now),
        condition(
            "Progressing",
            "False",
            reason,
            "nothing is scheduled until this is fixed".into(),
            generation,
            previous,
            now,
        ),
    ];
    st
}
