//! Which backups to delete: pure, so the rules are table-tested without storage.
//!
//! Only good backups (those with a manifest) are ever passed in, so failed runs never count.
//! `keepLast: N` keeps the N newest; `maxAge` keeps those younger than it; with both, a backup is
//! deleted when either rule drops it. The newest backup is kept whatever the rules say.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The retention rules of a Backup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: Option<usize>,
    pub max_age: Option<Duration>,
}

impl Policy {
    /// Whether any rule is set (without one, nothing is ever deleted).
    pub fn is_set(&self) -> bool {
        self.keep_last.is_some() || self.max_age.is_some()
    }
}

/// The indices into `times` (start times of good backups, any order) that `policy` deletes at
/// `now`, ascending.
pub fn to_delete(times: &[DateTime<Utc>], policy: Policy, now: DateTime<Utc>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    // Newest first; ties keep input order so the result is deterministic.
    order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(a.cmp(&b)));
    let mut out = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        if rank == 0 {
            continue; // the newest good backup is never deleted
        }
        let too_many = policy.keep_last.is_some_and(|n| rank >= n);
        let too_old = policy.max_age.is_some_and(|max| {
            now.signed_duration_since(times[i])
                .to_std()
                .is_ok_and(|age| age > max)
        });
        if too_many || too_old {
            out.push(i);
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, 2, 0, 0).unwrap()
    }
    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn table() {
        let now = day(20);
        // Backups on days 1..=10 at indices 0..=9 (oldest first).
        let ten: Vec<_> = (1..=10).map(day).collect();
        type Case = (&'static str, Vec<DateTime<Utc>>, Policy, Vec<usize>);
        let cases: Vec<Case> = vec![
            ("no rule keeps all", ten.clone(), Policy::default(), vec![]),
            (
                "keep last 3",
                ten.clone(),
                Policy {
                    keep_last: Some(3),
                    max_age: None,
                },
                (0..7).collect(),
            ),
            (
                "keep last more than present",
                ten.clone(),
                Policy {
                    keep_last: Some(30),
                    max_age: None,
                },
                vec![],
            ),
            (
                "keep last 1",
                ten.clone(),
                Policy {
                    keep_last: Some(1),
                    max_age: None,
                },
                (0..9).collect(),
            ),
            (
                "max age 12 days drops days 1..7",
                ten.clone(),
                Policy {
                    keep_last: None,
                    max_age: Some(12 * DAY),
                },
                (0..7).collect(),
            ),
            (
                "max age keeps the newest even when all are old",
                ten.clone(),
                Policy {
                    keep_last: None,
                    max_age: Some(DAY),
                },
                (0..9).collect(),
            ),
            (
                "either rule deletes: keep 5, max age 12d",
                ten.clone(),
                Policy {
                    keep_last: Some(5),
                    max_age: Some(12 * DAY),
                },
                (0..7).collect(),
            ),
            (
                "either rule deletes: keep 2, max age 12d",
                ten.clone(),
                Policy {
                    keep_last: Some(2),
                    max_age: Some(12 * DAY),
                },
                (0..8).collect(),
            ),
            (
                "unsorted input",
                vec![day(3), day(9), day(1), day(5)],
                Policy {
                    keep_last: Some(2),
                    max_age: None,
                },
                vec![0, 2],
            ),
            (
                "empty",
                vec![],
                Policy {
                    keep_last: Some(1),
                    max_age: Some(DAY),
                },
                vec![],
            ),
            (
                "exactly max age is kept",
                vec![day(10), day(19)],
                Policy {
                    keep_last: None,
                    max_age: Some(10 * DAY),
                },
                vec![],
            ),
        ];
        for (what, times, policy, want) in cases {
            assert_eq!(to_delete(&times, policy, now), want, "{what}");
        }
    }
}
