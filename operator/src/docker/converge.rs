//! What to do, given what runs: for each replica group, which replicas to create, which to stop,
//! and which may serve traffic. Pure; the run loop applies the result and comes back on the next
//! event, so a rollout is a sequence of passes and survives berth being killed in the middle
//! (every fact it needs is in the containers' labels and states).
//!
//! Rules (maxSurge 1, maxUnavailable 0 for a rolling group):
//! - a stopped container (exited, dead, created but never started) is removed and replaced;
//! - an unhealthy replica is replaced, except the replica of a new version during a rollout
//!   while the old version still serves: then the rollout is failing, the old replicas keep
//!   serving and the group reports the reason (Degraded) instead of hot-looping;
//! - a rolling group with old replicas creates one new replica at a time, and removes an old
//!   one for each new one that is healthy; without old replicas it creates what is missing at
//!   once; a `recreate` group (it owns a data volume) stops the old one first;
//! - surplus replicas go newest first (highest replica number);
//! - nothing is created while a group it waits for has no healthy replica.

use std::collections::BTreeSet;

/// The state of one container, as far as the decision goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Running, health check not yet passed (or the engine is restarting it).
    Starting,
    /// Running and healthy (or running without a health check).
    Ready,
    /// Running and failing its health check.
    Unhealthy,
    /// Not running and not coming back by itself.
    Stopped,
}

impl Health {
    /// From the engine's `State` (`running`, `exited` ...) and `Status` (`Up 3s (healthy)`).
    pub fn from_engine(state: &str, status: &str) -> Health {
        match state {
            "running" => {
                if status.contains("(unhealthy)") {
                    Health::Unhealthy
                } else if status.contains("(health: starting)") {
                    Health::Starting
                } else {
                    Health::Ready
                }
            }
            "restarting" => Health::Starting,
            // `paused` is someone debugging: leave it be, but it does not serve.
            "paused" => Health::Starting,
            _ => Health::Stopped,
        }
    }
}

/// One observed replica of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub name: String,
    pub replica: u32,
    pub hash: String,
    pub health: Health,
    pub image: String,
}

/// What a group should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    pub hash: String,
    pub replicas: u32,
    pub recreate: bool,
}

/// Why a container is being removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    Stopped,
    Unhealthy,
    Superseded,
    Surplus,
    Orphan,
}

/// A container to stop and remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub name: String,
    pub reason: RemoveReason,
}

/// The decision for one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Replica numbers to create.
    pub create: Vec<u32>,
    pub remove: Vec<Removal>,
    /// Ready replicas that stay: what the proxy sends traffic to.
    pub serving: Vec<String>,
    /// Ready replicas of the wanted version.
    pub ready: u32,
    /// Something is still changing.
    pub progressing: bool,
    /// Something that should work does not (the rollout is failing, replicas are failing).
    pub degraded: Option<String>,
    /// Why nothing is created yet.
    pub waiting: Option<String>,
}

/// Decides for one group. `blocked_by`: the groups it waits for that have no healthy replica.
pub fn decide(spec: &GroupSpec, observed: &[Replica], blocked_by: &[String]) -> Decision {
    let mut d = Decision::default();
    let (cur, old): (Vec<&Replica>, Vec<&Replica>) =
        observed.iter().partition(|r| r.hash == spec.hash);
    let old_ready: Vec<&Replica> = old
        .iter()
        .copied()
        .filter(|r| r.health == Health::Ready)
        .collect();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let remove =
        |d: &mut Decision, removed: &mut BTreeSet<String>, r: &Replica, reason: RemoveReason| {
            if removed.insert(r.name.clone()) {
                d.remove.push(Removal {
                    name: r.name.clone(),
                    reason,
                });
            }
        };
    // Old replicas that are still starting (restarted after a crash, say) are waited for: the
    // update goes on once they serve again (or turn unhealthy), so it never runs on fewer
    // healthy replicas than the stack had. Once the new version has all it wants, they go.
    let cur_ready_now = cur.iter().filter(|r| r.health == Health::Ready).count() as u32;
    let old_starting =
        cur_ready_now < spec.replicas && old.iter().any(|r| r.health == Health::Starting);
    // Old replicas that do not serve and will not have nothing left to give.
    for r in &old {
        if r.health != Health::Ready && !(old_starting && r.health == Health::Starting) {
            let reason = if r.health == Health::Stopped {
                RemoveReason::Stopped
            } else {
                RemoveReason::Superseded
            };
            remove(&mut d, &mut removed, r, reason);
        }
    }
    let rollout_failing = !old_ready.is_empty();
    let mut failing_kept = false;
    let mut alive: Vec<&Replica> = Vec::new();
    for r in &cur {
        match r.health {
            Health::Stopped => {
                d.degraded = Some(format!("replica {} stopped; replacing it", r.name));
                remove(&mut d, &mut removed, r, RemoveReason::Stopped);
            }
            Health::Unhealthy if rollout_failing => {
                d.degraded = Some(format!(
                    "new replica {} ({}) does not become healthy; the previous version keeps serving",
                    r.name, r.image
                ));
                failing_kept = true;
                alive.push(r);
            }
            Health::Unhealthy => {
                d.degraded = Some(format!("replica {} turned unhealthy; replacing it", r.name));
                remove(&mut d, &mut removed, r, RemoveReason::Unhealthy);
            }
            _ => alive.push(r),
        }
    }
    let cur_ready = alive.iter().filter(|r| r.health == Health::Ready).count() as u32;
    let pending = alive.iter().any(|r| r.health != Health::Ready);
    d.ready = cur_ready;
    let want = spec.replicas;
    let have = alive.len() as u32;

    // Surplus of the current version: newest (highest number) first, not-ready ones before.
    if have > want {
        let mut extra = alive.clone();
        extra.sort_by_key(|r| (r.health == Health::Ready, std::cmp::Reverse(r.replica)));
        for r in extra.into_iter().take((have - want) as usize) {
            remove(&mut d, &mut removed, r, RemoveReason::Surplus);
        }
    }

    // What to create.
    let missing = want.saturating_sub(have);
    let old_count = old.iter().filter(|r| !removed.contains(&r.name)).count();
    let to_create = if missing == 0 {
        0
    } else if spec.recreate && old_count > 0 {
        // Stop the old server first; create on a later pass.
        for r in &old_ready {
            remove(&mut d, &mut removed, r, RemoveReason::Superseded);
        }
        0
    } else if old_count > 0 && old_starting {
        d.waiting = Some("waiting for the running replicas to be healthy before updating".into());
        0
    } else if old_count > 0 {
        u32::from(!pending && d.degraded.is_none())
    } else {
        missing
    };
    if to_create > 0 {
        if blocked_by.is_empty() {
            let used: BTreeSet<u32> = observed.iter().map(|r| r.replica).collect();
            let mut n = 1;
            while (d.create.len() as u32) < to_create {
                if !used.contains(&n) {
                    d.create.push(n);
                }
                n += 1;
            }
        } else {
            d.waiting = Some(format!(
                "waiting for {} to be healthy",
                blocked_by.join(", ")
            ));
        }
    }

    // Old replicas to retire: one for each ready replica of the new version, beyond the want.
    if !spec.recreate {
        let keep_old = want.saturating_sub(cur_ready) as usize;
        let mut olds: Vec<&&Replica> = old_ready
            .iter()
            .filter(|r| !removed.contains(&r.name))
            .collect();
        olds.sort_by_key(|r| r.replica);
        for r in olds.into_iter().skip(keep_old) {
            remove(&mut d, &mut removed, r, RemoveReason::Superseded);
        }
    }

    d.serving = observed
        .iter()
        .filter(|r| r.health == Health::Ready && !removed.contains(&r.name))
        .map(|r| r.name.clone())
        .collect();
    d.progressing = !d.create.is_empty()
        || !d.remove.is_empty()
        || pending
        || d.waiting.is_some()
        || old_count > 0;
    if failing_kept {
        // Stuck until the spec changes: not progressing (like a rollout past its deadline),
        // so the loop goes back to waiting for events.
        d.progressing = !d.create.is_empty() || !d.remove.is_empty();
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u32, hash: &str, health: Health) -> Replica {
        Replica {
            name: format!("s-api-{n}"),
            replica: n,
            hash: hash.into(),
            health,
            image: format!("img:{hash}"),
        }
    }
    fn spec(hash: &str, replicas: u32) -> GroupSpec {
        GroupSpec {
            hash: hash.into(),
            replicas,
            recreate: false,
        }
    }
    fn names(rm: &[Removal]) -> Vec<(&str, RemoveReason)> {
        rm.iter()
            .map(|r| (r.name.as_str(), r.reason.clone()))
            .collect()
    }

    #[test]
    fn from_empty_creates_all_at_once() {
        let d = decide(&spec("a", 3), &[], &[]);
        assert_eq!(d.create, vec![1, 2, 3]);
        assert!(d.remove.is_empty());
        assert!(d.progressing);
    }

    #[test]
    fn converged_is_a_no_op() {
        let obs = [r(1, "a", Health::Ready), r(2, "a", Health::Ready)];
        let d = decide(&spec("a", 2), &obs, &[]);
        assert_eq!(d.create, Vec::<u32>::new());
        assert!(d.remove.is_empty());
        assert!(!d.progressing);
        assert_eq!(d.serving, vec!["s-api-1", "s-api-2"]);
        assert_eq!(d.degraded, None);
    }

    #[test]
    fn waits_for_dependencies() {
        let d = decide(&spec("a", 1), &[], &["s-postgres".into()]);
        assert!(d.create.is_empty());
        assert_eq!(
            d.waiting.as_deref(),
            Some("waiting for s-postgres to be healthy")
        );
    }

    #[test]
    fn an_update_after_a_crash_waits_for_the_restarting_replica() {
        // Replica 2 of version a was killed and is restarting when version b arrives.
        let obs = [r(1, "a", Health::Ready), r(2, "a", Health::Starting)];
        let d = decide(&spec("b", 2), &obs, &[]);
        assert!(d.create.is_empty() && d.remove.is_empty(), "{d:?}");
        assert_eq!(
            d.waiting.as_deref(),
            Some("waiting for the running replicas to be healthy before updating")
        );
        assert!(d.progressing);
        assert_eq!(d.serving, vec!["s-api-1"]);
        // It serves again: the rolling update starts, both old replicas serving meanwhile.
        let obs = [r(1, "a", Health::Ready), r(2, "a", Health::Ready)];
        let d = decide(&spec("b", 2), &obs, &[]);
        assert_eq!(d.create, vec![3]);
        assert!(d.remove.is_empty());
        // Or it turns unhealthy: it goes, and the update proceeds.
        let obs = [r(1, "a", Health::Ready), r(2, "a", Health::Unhealthy)];
        let d = decide(&spec("b", 2), &obs, &[]);
        assert_eq!(names(&d.remove), [("s-api-2", RemoveReason::Superseded)]);
        assert_eq!(d.create, vec![3]);
        // The new version complete: a still-starting old replica is not waited for.
        let obs = [
            r(1, "a", Health::Starting),
            r(3, "b", Health::Ready),
            r(4, "b", Health::Ready),
        ];
        let d = decide(&spec("b", 2), &obs, &[]);
        assert_eq!(names(&d.remove), [("s-api-1", RemoveReason::Superseded)]);
    }

    #[test]
    fn rolling_update_steps() {
        // 1: a new replica next to the old one, the old keeps serving.
        let d = decide(&spec("b", 1), &[r(1, "a", Health::Ready)], &[]);
        assert_eq!(d.create, vec![2]);
        assert!(d.remove.is_empty());
        assert_eq!(d.serving, vec!["s-api-1"]);
        // 2: it is starting: nothing more.
        let obs = [r(1, "a", Health::Ready), r(2, "b", Health::Starting)];
        let d = decide(&spec("b", 1), &obs, &[]);
        assert!(d.create.is_empty() && d.remove.is_empty());
        assert_eq!(d.serving, vec!["s-api-1"]);
        // 3: healthy: it serves, the old goes.
        let obs = [r(1, "a", Health::Ready), r(2, "b", Health::Ready)];
        let d = decide(&spec("b", 1), &obs, &[]);
        assert_eq!(
            names(&d.remove),
            vec![("s-api-1", RemoveReason::Superseded)]
        );
        assert_eq!(d.serving, vec!["s-api-2"]);
        // 4: done.
        let d = decide(&spec("b", 1), &[r(2, "b", Health::Ready)], &[]);
        assert!(!d.progressing);
    }

    #[test]
    fn rolling_two_replicas_one_at_a_time() {
        let obs = [
            r(1, "a", Health::Ready),
            r(2, "a", Health::Ready),
            r(3, "b", Health::Ready),
        ];
        let d = decide(&spec("b", 2), &obs, &[]);
        assert_eq!(d.create, vec![4]);
        assert_eq!(
            names(&d.remove),
            vec![("s-api-2", RemoveReason::Superseded)]
        );
        assert_eq!(d.serving, vec!["s-api-1", "s-api-3"]);
    }

    #[test]
    fn failing_rollout_keeps_the_old_version() {
        let obs = [r(1, "a", Health::Ready), r(2, "b", Health::Unhealthy)];
        let d = decide(&spec("b", 1), &obs, &[]);
        assert!(d.create.is_empty());
        assert!(d.remove.is_empty());
        assert_eq!(d.serving, vec!["s-api-1"]);
        assert!(!d.progressing);
        assert!(d.degraded.unwrap().contains("does not become healthy"));
    }

    #[test]
    fn healing() {
        let obs = [r(1, "a", Health::Stopped), r(2, "a", Health::Unhealthy)];
        let d = decide(&spec("a", 2), &obs, &[]);
        assert_eq!(
            names(&d.remove),
            vec![
                ("s-api-1", RemoveReason::Stopped),
                ("s-api-2", RemoveReason::Unhealthy)
            ]
        );
        assert_eq!(d.create, vec![3, 4]);
        assert!(d.degraded.is_some());
    }

    #[test]
    fn scale_down_newest_first() {
        let obs = [
            r(1, "a", Health::Ready),
            r(2, "a", Health::Ready),
            r(3, "a", Health::Ready),
        ];
        let d = decide(&spec("a", 1), &obs, &[]);
        assert_eq!(
            names(&d.remove),
            vec![
                ("s-api-3", RemoveReason::Surplus),
                ("s-api-2", RemoveReason::Surplus)
            ]
        );
        assert_eq!(d.serving, vec!["s-api-1"]);
    }

    #[test]
    fn recreate_stops_the_old_first() {
        let s = GroupSpec {
            recreate: true,
            ..spec("b", 1)
        };
        let d = decide(&s, &[r(1, "a", Health::Ready)], &[]);
        assert!(d.create.is_empty());
        assert_eq!(
            names(&d.remove),
            vec![("s-api-1", RemoveReason::Superseded)]
        );
        let d = decide(&s, &[], &[]);
        assert_eq!(d.create, vec![1]);
    }

    #[test]
    fn interrupted_rollout_resumes_without_duplicates() {
        // berth died after creating the new replica: the next pass does not create another.
        let obs = [r(1, "a", Health::Ready), r(2, "b", Health::Starting)];
        let d = decide(&spec("b", 1), &obs, &[]);
        assert!(d.create.is_empty());
        // ... or after creating it but before starting it.
        let obs = [r(1, "a", Health::Ready), r(2, "b", Health::Stopped)];
        let d = decide(&spec("b", 1), &obs, &[]);
        assert_eq!(names(&d.remove), vec![("s-api-2", RemoveReason::Stopped)]);
        assert!(d.create.is_empty(), "waits until the stopped one is gone");
    }

    #[test]
    fn engine_states() {
        let cases = [
            ("running", "Up 2 seconds (healthy)", Health::Ready),
            (
                "running",
                "Up 2 seconds (health: starting)",
                Health::Starting,
            ),
            ("running", "Up 2 minutes (unhealthy)", Health::Unhealthy),
            ("running", "Up 2 minutes", Health::Ready),
            (
                "restarting",
                "Restarting (1) 1 second ago",
                Health::Starting,
            ),
            ("exited", "Exited (137) 1 second ago", Health::Stopped),
            ("created", "Created", Health::Stopped),
            ("dead", "Dead", Health::Stopped),
        ];
        for (state, status, want) in cases {
            assert_eq!(Health::from_engine(state, status), want, "{state} {status}");
        }
    }
}
