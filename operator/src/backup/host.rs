//! When backups run on a Docker host: a [`Scheduler`] that decides, from an injected [`Clock`],
//! when each Backup is due (cron + time zone), and [`record`], the Backup's status after a
//! run. The run itself (`pg_dump` by `docker exec` in the stack's PostgreSQL container) is
//! [`crate::docker::backup_exec::run_in_container`].
//!
//! How the host backend uses it, once per loop turn:
//! ```text
//! let due = scheduler.due(clock.now(), &backups);          // names whose time has come
//! for d in due {
//!     let job = HostJob::from_spec(&name, &spec, format!("{stack}-postgres-1"), folder)?;
//!     let result = run_in_container(&docker, &job).await;  // may take minutes: spawn it
//!     scheduler.finished(&d.name, clock.now());
//!     status = host::record(&backup, previous, d.scheduled_for, clock.now(), &result);
//! }
//! sleep until scheduler.next_wakeup(clock.now(), &backups)
//! ```
//!
//! Catch-up policy: a Backup seen for the first time starts counting from `now` (or from the
//! `lastScheduleTime` its stored status gives, see [`Scheduler::resume`]). When one or more
//! firing times were missed (the host was down, a run outlasted the period), it runs **once**,
//! at the next look, and never once per missed time. A Backup is never run twice at the same
//! time (`finished` must be called before it can be due again), and a changed schedule or
//! time zone counts from the change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::manifest::Manifest;
use super::report::{status_from_jobs, ObservedJob, RunReport};
use super::run::RunOutcome;
use super::BackupError;
use crate::api::backup::BackupSpec;
use crate::api::schedule::Schedule;
use crate::api::{Backup, BackupStatus};

/// Where "now" comes from: the system clock, or a test's hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(t: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(t))
    }
    pub fn set(&self, t: DateTime<Utc>) {
        if let Ok(mut g) = self.0.lock() {
            *g = t;
        }
    }
    pub fn advance(&self, d: Duration) {
        if let Ok(mut g) = self.0.lock() {
            *g += chrono::Duration::from_std(d).unwrap_or_default();
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
            .lock()
            .map(|g| *g)
            .unwrap_or_else(|e| *e.into_inner())
    }
}

#[derive(Clone, Debug)]
struct Entry {
    key: (String, String),
    /// The time up to which firing times have been handled.
    last: DateTime<Utc>,
    running: bool,
}

/// A Backup whose time has come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub name: String,
    /// The (first missed) firing time this run is for.
    pub scheduled_for: DateTime<Utc>,
}

/// Decides when each Backup runs. Pure state: no I/O, time comes in as arguments.
#[derive(Debug, Default)]
pub struct Scheduler {
    entries: HashMap<String, Entry>,
    resumed: HashMap<String, DateTime<Utc>>,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `name`'s schedule from `last_schedule_time` (from its stored status) instead of
    /// from when it is first seen, so a firing missed while berth was down runs once.
    pub fn resume(&mut self, name: &str, last_schedule_time: DateTime<Utc>) {
        self.resumed.insert(name.to_string(), last_schedule_time);
    }

    /// The Backups due at `now` among `backups` (name → spec); each is marked running until
    /// [`finished`](Self::finished). Suspended Backups and invalid schedules are never due.
    pub fn due(&mut self, now: DateTime<Utc>, backups: &BTreeMap<String, BackupSpec>) -> Vec<Due> {
        self.entries.retain(|name, _| backups.contains_key(name));
        let mut out = Vec::new();
        for (name, spec) in backups {
            let key = (spec.schedule.clone(), spec.time_zone.clone());
            let Ok(schedule) = Schedule::parse(&spec.schedule, &spec.time_zone) else {
                continue;
            };
            let start = self.resumed.remove(name).unwrap_or(now);
            let entry = self.entries.entry(name.clone()).or_insert(Entry {
                key: key.clone(),
                last: start,
                running: false,
            });
            if entry.key != key {
                entry.key = key;
                entry.last = now;
            }
            if spec.suspend {
                // Time passes while suspended; resuming does not replay it.
                entry.last = now;
                continue;
            }
            if entry.running {
                continue;
            }
            if let Some(next) = schedule.next_after(entry.last).filter(|t| *t <= now) {
                entry.last = now;
                entry.running = true;
                out.push(Due {
                    name: name.clone(),
                    scheduled_for: next,
                });
            }
        }
        out
    }

    /// Marks `name`'s run as over at `now`: it is due again at its next firing time after `now`
    /// (firing times during the run are skipped, as with `concurrencyPolicy: Forbid`).
    pub fn finished(&mut self, name: &str, now: DateTime<Utc>) {
        if let Some(e) = self.entries.get_mut(name) {
            e.running = false;
            e.last = e.last.max(now);
        }
    }

    /// When the host loop should look again: the earliest next firing time.
    pub fn next_wakeup(
        &self,
        now: DateTime<Utc>,
        backups: &BTreeMap<String, BackupSpec>,
    ) -> Option<DateTime<Utc>> {
        backups
            .iter()
            .filter(|(_, s)| !s.suspend)
            .filter_map(|(name, s)| {
                let sched = Schedule::parse(&s.schedule, &s.time_zone).ok()?;
                let from = self.entries.get(name).map(|e| e.last).unwrap_or(now);
                sched.next_after(from)
            })
            .min()
    }
}

/// The Backup's status after a host run, in the same shape as on Kubernetes (the run is
/// described as a finished Job named `host-<time>`).
pub fn record(
    backup: &Backup,
    previous: Option<&BackupStatus>,
    scheduled_for: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    result: &Result<RunOutcome, BackupError>,
) -> BackupStatus {
    let (report, failure) = match result {
        Ok(out) => (
            RunReport {
                backup: Some(out.backup.record()),
                backups: out.kept.iter().map(Manifest::record).collect(),
                error: None,
            },
            None,
        ),
        Err(e) => (
            RunReport {
                error: Some(e.to_string()),
                ..RunReport::default()
            },
            Some(e.to_string()),
        ),
    };
    let job = ObservedJob {
        name: format!("host-{}", scheduled_for.format("%Y%m%dT%H%M%SZ")),
        created: Some(scheduled_for),
        completed: Some(finished_at),
        active: false,
        succeeded: result.is_ok(),
        failed: result.is_err(),
        failure,
        report: Some(report),
    };
    status_from_jobs(backup, &[job], previous, finished_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn spec(schedule: &str, tz: &str) -> BackupSpec {
        serde_json::from_value(serde_json::json!({
            "schedule": schedule, "timeZone": tz,
            "database": {"appStackRef": "s"}, "destination": {"volume": {"size": "1Gi"}},
            "retention": {"keepLast": 3}
        }))
        .unwrap()
    }

    fn at(d: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, m, s).unwrap()
    }

    #[test]
    fn fires_when_due_once() {
        let clock = ManualClock::new(at(22, 0, 50, 0));
        let mut backups = BTreeMap::new();
        // 02:00 in Berlin is 01:00 UTC in November.
        backups.insert("nightly".to_string(), spec("0 2 * * *", "Europe/Berlin"));
        let mut s = Scheduler::new();
        assert!(s.due(clock.now(), &backups).is_empty());
        assert_eq!(s.next_wakeup(clock.now(), &backups), Some(at(22, 1, 0, 0)));
        clock.set(at(22, 0, 59, 59));
        assert!(s.due(clock.now(), &backups).is_empty());
        clock.advance(Duration::from_secs(1));
        let due = s.due(clock.now(), &backups);
        assert_eq!(
            due,
            vec![Due {
                name: "nightly".into(),
                scheduled_for: at(22, 1, 0, 0)
            }]
        );
        // Not again while running, nor after finishing within the same firing.
        clock.advance(Duration::from_secs(30));
        assert!(s.due(clock.now(), &backups).is_empty());
        s.finished("nightly", clock.now());
        assert!(s.due(clock.now(), &backups).is_empty());
        // The next night.
        clock.set(at(23, 1, 0, 5));
        assert_eq!(s.due(clock.now(), &backups).len(), 1);
    }

    #[test]
    fn missed_runs_catch_up_once() {
        let mut backups = BTreeMap::new();
        backups.insert("b".to_string(), spec("*/10 * * * *", "UTC"));
        let mut s = Scheduler::new();
        // Stored status says it last ran at 10:00; berth comes back at 10:47.
        s.resume("b", at(22, 10, 0, 0));
        let due = s.due(at(22, 10, 47, 0), &backups);
        assert_eq!(due.len(), 1, "one catch-up run, not four");
        assert_eq!(due[0].scheduled_for, at(22, 10, 10, 0));
        s.finished("b", at(22, 10, 48, 0));
        assert!(s.due(at(22, 10, 49, 0), &backups).is_empty());
        assert_eq!(s.due(at(22, 10, 50, 0), &backups).len(), 1);
    }

    #[test]
    fn a_run_longer_than_the_period_skips_firings() {
        let mut backups = BTreeMap::new();
        backups.insert("b".to_string(), spec("*/5 * * * *", "UTC"));
        let mut s = Scheduler::new();
        assert!(s.due(at(22, 9, 59, 0), &backups).is_empty());
        assert_eq!(s.due(at(22, 10, 0, 0), &backups).len(), 1);
        // Still running at 10:05 and 10:10: nothing.
        assert!(s.due(at(22, 10, 5, 0), &backups).is_empty());
        assert!(s.due(at(22, 10, 10, 0), &backups).is_empty());
        s.finished("b", at(22, 10, 11, 0));
        assert!(s.due(at(22, 10, 12, 0), &backups).is_empty());
        assert_eq!(s.due(at(22, 10, 15, 0), &backups).len(), 1);
    }

    #[test]
    fn suspended_and_changed_schedules() {
        let mut backups = BTreeMap::new();
        let mut sp = spec("0 * * * *", "UTC");
        sp.suspend = true;
        backups.insert("b".to_string(), sp.clone());
        let mut s = Scheduler::new();
        assert!(s.due(at(22, 9, 30, 0), &backups).is_empty());
        assert!(s.due(at(22, 11, 30, 0), &backups).is_empty());
        assert_eq!(s.next_wakeup(at(22, 11, 30, 0), &backups), None);
        // Resuming does not replay the hours spent suspended.
        sp.suspend = false;
        backups.insert("b".to_string(), sp.clone());
        assert!(s.due(at(22, 11, 31, 0), &backups).is_empty());
        assert_eq!(s.due(at(22, 12, 0, 0), &backups).len(), 1);
        s.finished("b", at(22, 12, 1, 0));
        // A new schedule counts from the change.
        backups.insert("b".to_string(), spec("30 * * * *", "UTC"));
        assert!(s.due(at(22, 12, 10, 0), &backups).is_empty());
        assert_eq!(s.due(at(22, 12, 30, 0), &backups).len(), 1);
        // A removed Backup is forgotten; an invalid schedule is never due.
        backups.clear();
        backups.insert("bad".to_string(), spec("not a cron", "UTC"));
        assert!(s.due(at(22, 23, 0, 0), &backups).is_empty());
    }
}
