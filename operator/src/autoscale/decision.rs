//! The scaling decision: a pure function of what was measured, what runs, the policy and the
//! recent recommendations. No I/O, no clock: `now` is an argument, so it is table- and
//! property-tested here.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::api::units::parse_duration;
use crate::api::worker::{OnQueueUnavailable, Scaling};

/// A Worker's `scaling` with its durations parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub jobs_per_replica: i64,
    pub activation_depth: i64,
    pub poll_interval: Duration,
    pub scale_up_stabilization: Duration,
    pub scale_down_stabilization: Duration,
    /// 0 = unlimited.
    pub max_scale_up_step: i32,
    pub on_queue_unavailable: OnQueueUnavailable,
}

/// A `scaling` block that validation should have refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("scaling.{field}: {message}")]
    Duration {
        field: &'static str,
        message: String,
    },
    #[error("scaling.pollInterval must be at least 100ms (got {0:?})")]
    PollTooFast(Duration),
    #[error("scaling.maxReplicas ({max}) must be >= minReplicas ({min})")]
    Range { min: i32, max: i32 },
}

impl Policy {
    /// Parses a Worker's `scaling`.
    pub fn from_spec(s: &Scaling) -> Result<Policy, PolicyError> {
        let dur = |field: &'static str, v: &str| {
            parse_duration(v).map_err(|message| PolicyError::Duration { field, message })
        };
        let poll_interval = dur("pollInterval", &s.poll_interval)?;
        if poll_interval < Duration::from_millis(100) {
            return Err(PolicyError::PollTooFast(poll_interval));
        }
        if s.max_replicas < s.min_replicas {
            return Err(PolicyError::Range {
                min: s.min_replicas,
                max: s.max_replicas,
            });
        }
        Ok(Policy {
            min_replicas: s.min_replicas.max(0),
            max_replicas: s.max_replicas,
            jobs_per_replica: s.jobs_per_replica.max(1),
            activation_depth: s.activation_depth.max(1),
            poll_interval,
            scale_up_stabilization: dur("scaleUpStabilization", &s.scale_up_stabilization)?,
            scale_down_stabilization: dur("scaleDownStabilization", &s.scale_down_stabilization)?,
            max_scale_up_step: s.max_scale_up_step.max(0),
            on_queue_unavailable: s.queue_unavailable_policy(),
        })
    }

    fn clamp(&self, n: i64) -> i32 {
        n.clamp(i64::from(self.min_replicas), i64::from(self.max_replicas)) as i32
    }

    /// The replicas the depth alone asks for: ceil(depth / jobsPerReplica) within
    /// [min, max]; from zero replicas only once the depth reaches `activationDepth`.
    pub fn recommend(&self, depth: i64, current: i32) -> i32 {
        let depth = depth.max(0);
        if current == 0 && depth < self.activation_depth {
            return self.clamp(0);
        }
        let wanted = depth / self.jobs_per_replica + i64::from(depth % self.jobs_per_replica != 0);
        self.clamp(wanted)
    }

    fn longest_window(&self) -> Duration {
        self.scale_up_stabilization
            .max(self.scale_down_stabilization)
    }
}

/// What the probe saw this cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The queue depth (waiting plus in-flight jobs).
    Depth(i64),
    /// The queue could not be read.
    Unavailable,
}

/// Why the decision is what it is; shown in events and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// desired = ceil(depth / jobsPerReplica) within [min, max].
    Depth,
    /// Below the activation depth at zero replicas.
    BelowActivation,
    /// Scale-up held back to the lowest recommendation of the up window.
    UpStabilized,
    /// Scale-down held back to the highest recommendation of the down window.
    DownStabilized,
    /// Scale-up limited by maxScaleUpStep.
    StepLimited,
    /// The queue could not be read: replicas held.
    ProbeFailedHold,
    /// The queue could not be read: `onQueueUnavailable.replicas` (never fewer than run now).
    ProbeFailedFixed,
    /// The current count was outside [min, max] (the spec changed).
    OutOfRange,
}

impl Reason {
    /// CamelCase, for events and conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Depth => "QueueDepth",
            Reason::BelowActivation => "BelowActivationDepth",
            Reason::UpStabilized => "ScaleUpStabilized",
            Reason::DownStabilized => "ScaleDownStabilized",
            Reason::StepLimited => "MaxScaleUpStep",
            Reason::ProbeFailedHold => "QueueUnavailableHold",
            Reason::ProbeFailedFixed => "QueueUnavailableFixed",
            Reason::OutOfRange => "OutOfRange",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub desired: i32,
    /// The unstabilized recommendation of this cycle (`None` when the probe failed).
    pub recommendation: Option<i32>,
    pub reason: Reason,
}

/// Recent recommendations with their times, newest last, kept as runs: consecutive equal
/// recommendations are one entry with the time of the latest. Whether a value was
/// recommended within a window only depends on that latest time, so decisions are the same
/// as with every recommendation kept, and a queue that stays put keeps one entry instead of
/// one per poll (a 10-minute window polled every second: 600 entries, 14 KB per Worker).
#[derive(Clone, Debug, Default)]
pub struct History {
    entries: VecDeque<(Instant, i32)>,
}

impl History {
    /// Records a recommendation and forgets those older than `keep`.
    pub fn record(&mut self, now: Instant, replicas: i32, keep: Duration) {
        match self.entries.back_mut() {
            Some((t, r)) if *r == replicas => *t = now,
            _ => self.entries.push_back((now, replicas)),
        }
        while let Some((t, _)) = self.entries.front() {
            if now.saturating_duration_since(*t) > keep {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    /// Recommendations made within `window` before `now` (inclusive).
    fn within(&self, now: Instant, window: Duration) -> impl Iterator<Item = i32> + '_ {
        self.entries
            .iter()
            .filter(move |(t, _)| now.saturating_duration_since(*t) <= window)
            .map(|(_, r)| *r)
    }

    /// Entries kept (runs of equal recommendations).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Decides the replicas. `history` holds earlier recommendations (not this one); the caller
/// records `decision.recommendation` afterwards with [`History::record`] (see [`step`]).
pub fn decide(
    obs: Observation,
    current: i32,
    policy: &Policy,
    history: &History,
    now: Instant,
) -> Decision {
    let depth = match obs {
        Observation::Depth(d) => d,
        Observation::Unavailable => {
            // A blind probe never removes replicas: hold, or raise to the fixed count.
            return match policy.on_queue_unavailable {
                OnQueueUnavailable::Hold => Decision {
                    desired: current,
                    recommendation: None,
                    reason: Reason::ProbeFailedHold,
                },
                OnQueueUnavailable::Fixed(n) => Decision {
                    desired: current.max(n.min(policy.max_replicas)),
                    recommendation: None,
                    reason: Reason::ProbeFailedFixed,
                },
            };
        }
    };
    let rec = policy.recommend(depth, current);
    let (desired, reason) = if rec > current {
        // Up: the lowest recommendation within the up window, this one included.
        let lowest = history
            .within(now, policy.scale_up_stabilization)
            .chain([rec])
            .min()
            .unwrap_or(rec);
        let mut target = lowest.max(current);
        let mut reason = if target < rec {
            Reason::UpStabilized
        } else if current == 0 || rec > 0 {
            Reason::Depth
        } else {
            Reason::BelowActivation
        };
        if policy.max_scale_up_step > 0 && target > current.saturating_add(policy.max_scale_up_step)
        {
            target = current + policy.max_scale_up_step;
            reason = Reason::StepLimited;
        }
        (target, reason)
    } else if rec < current {
        // Down: the highest recommendation within the down window, this one included.
        let highest = history
            .within(now, policy.scale_down_stabilization)
            .chain([rec])
            .max()
            .unwrap_or(rec);
        let target = highest.min(current);
        let reason = if target > rec {
            Reason::DownStabilized
        } else {
            Reason::Depth
        };
        (target, reason)
    } else if current == 0 && depth > 0 && depth < policy.activation_depth {
        (current, Reason::BelowActivation)
    } else {
        (current, Reason::Depth)
    };
    let clamped = desired.clamp(policy.min_replicas, policy.max_replicas);
    Decision {
        desired: clamped,
        recommendation: Some(rec),
        reason: if clamped != desired {
            Reason::OutOfRange
        } else {
            reason
        },
    }
}

/// [`decide`], then records the recommendation in `history`.
pub fn step(
    obs: Observation,
    current: i32,
    policy: &Policy,
    history: &mut History,
    now: Instant,
) -> Decision {
    let d = decide(obs, current, policy, history, now);
    if let Some(r) = d.recommendation {
        history.record(now, r, policy.longest_window());
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(min: i32, max: i32, per: i64) -> Policy {
        Policy {
            min_replicas: min,
            max_replicas: max,
            jobs_per_replica: per,
            activation_depth: 1,
            poll_interval: Duration::from_secs(1),
            scale_up_stabilization: Duration::ZERO,
            scale_down_stabilization: Duration::from_secs(300),
            max_scale_up_step: 0,
            on_queue_unavailable: OnQueueUnavailable::Hold,
        }
    }

    #[test]
    fn from_spec_parses_and_defaults() {
        let s: Scaling = serde_json::from_value(serde_json::json!({"maxReplicas": 10})).unwrap();
        let p = Policy::from_spec(&s).unwrap();
        assert_eq!(p.min_replicas, 0);
        assert_eq!(p.jobs_per_replica, 5);
        assert_eq!(p.poll_interval, Duration::from_secs(1));
        assert_eq!(p.scale_down_stabilization, Duration::from_secs(300));
        let bad: Scaling =
            serde_json::from_value(serde_json::json!({"maxReplicas": 1, "pollInterval": "soon"}))
                .unwrap();
        assert!(matches!(
            Policy::from_spec(&bad),
            Err(PolicyError::Duration {
                field: "pollInterval",
                ..
            })
        ));
    }

    #[test]
    fn a_steady_queue_keeps_one_entry_per_run() {
        let mut p = policy(0, 10, 5);
        p.scale_down_stabilization = Duration::from_secs(600);
        let t0 = Instant::now();
        let mut h = History::default();
        let mut current = 0;
        // Ten minutes polled every second at the same depth, then another depth.
        for i in 0..600 {
            let at = t0 + Duration::from_secs(i);
            current = step(Observation::Depth(20), current, &p, &mut h, at).desired;
        }
        assert_eq!((current, h.len()), (4, 1));
        let at = t0 + Duration::from_secs(600);
        let d = step(Observation::Depth(0), current, &p, &mut h, at);
        // Scaling down waits for the window: 4 was recommended a second ago.
        assert_eq!(
            (d.desired, d.reason, h.len()),
            (4, Reason::DownStabilized, 2)
        );
        // Once the last 4 is older than the window, down to 0; the run of 4 is forgotten.
        let at = t0 + Duration::from_secs(599 + 601);
        let d = step(Observation::Depth(0), 4, &p, &mut h, at);
        assert_eq!((d.desired, h.len()), (0, 1));
    }

    #[test]
    fn table() {
        let t0 = Instant::now();
        let p = policy(0, 10, 5);
        let h = History::default();
        // (depth, current) -> desired
        let cases = [
            (0, 0, 0),
            (1, 0, 1),
            (5, 0, 1),
            (6, 0, 2),
            (49, 1, 10),
            (500, 3, 10),
            (0, 3, 0), // empty history: the down window holds nothing else
        ];
        for (depth, current, want) in cases {
            let d = decide(Observation::Depth(depth), current, &p, &h, t0);
            assert_eq!(d.desired, want, "depth {depth} current {current}: {d:?}");
        }
    }

    #[test]
    fn activation_depth_only_from_zero() {
        let t0 = Instant::now();
        let mut p = policy(0, 10, 5);
        p.activation_depth = 10;
        let h = History::default();
        let d = decide(Observation::Depth(9), 0, &p, &h, t0);
        assert_eq!((d.desired, d.reason), (0, Reason::BelowActivation));
        assert_eq!(decide(Observation::Depth(10), 0, &p, &h, t0).desired, 2);
        // Already running: plain ceil.
        assert_eq!(decide(Observation::Depth(9), 2, &p, &h, t0).desired, 2);
    }

    #[test]
    fn down_window_keeps_the_highest() {
        let t0 = Instant::now();
        let p = policy(0, 10, 1);
        let mut h = History::default();
        assert_eq!(step(Observation::Depth(8), 2, &p, &mut h, t0).desired, 8);
        let later = t0 + Duration::from_secs(60);
        let d = step(Observation::Depth(1), 8, &p, &mut h, later);
        assert_eq!((d.desired, d.reason), (8, Reason::DownStabilized));
        let after = t0 + Duration::from_secs(301);
        // 8 has left the window; 1 (at +60s) is the highest left.
        assert_eq!(step(Observation::Depth(0), 8, &p, &mut h, after).desired, 1);
    }

    #[test]
    fn up_window_and_step() {
        let t0 = Instant::now();
        let mut p = policy(0, 100, 1);
        p.scale_up_stabilization = Duration::from_secs(10);
        let mut h = History::default();
        step(Observation::Depth(2), 2, &p, &mut h, t0);
        let d = step(
            Observation::Depth(50),
            2,
            &p,
            &mut h,
            t0 + Duration::from_secs(5),
        );
        assert_eq!((d.desired, d.reason), (2, Reason::UpStabilized));
        let d = step(
            Observation::Depth(50),
            2,
            &p,
            &mut h,
            t0 + Duration::from_secs(11),
        );
        assert_eq!(d.desired, 50);
        p.scale_up_stabilization = Duration::ZERO;
        p.max_scale_up_step = 4;
        let d = decide(Observation::Depth(50), 2, &p, &History::default(), t0);
        assert_eq!((d.desired, d.reason), (6, Reason::StepLimited));
    }

    #[test]
    fn probe_failure() {
        let t0 = Instant::now();
        let mut p = policy(0, 10, 1);
        let mut h = History::default();
        let d = step(Observation::Unavailable, 4, &p, &mut h, t0);
        assert_eq!((d.desired, d.reason), (4, Reason::ProbeFailedHold));
        assert!(h.is_empty(), "a failed probe is no recommendation");
        p.on_queue_unavailable = OnQueueUnavailable::Fixed(6);
        assert_eq!(decide(Observation::Unavailable, 4, &p, &h, t0).desired, 6);
        assert_eq!(decide(Observation::Unavailable, 8, &p, &h, t0).desired, 8);
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        (
            0i32..5,
            0i32..30,
            1i64..20,
            1i64..10,
            0u64..30,
            0u64..600,
            0i32..5,
            prop_oneof![Just(None), (0i32..40).prop_map(Some)],
        )
            .prop_map(|(min, span, per, act, up, down, step, fixed)| Policy {
                min_replicas: min,
                max_replicas: (min + span).max(1),
                jobs_per_replica: per,
                activation_depth: act,
                poll_interval: Duration::from_secs(1),
                scale_up_stabilization: Duration::from_secs(up),
                scale_down_stabilization: Duration::from_secs(down),
                max_scale_up_step: step,
                on_queue_unavailable: fixed
                    .map_or(OnQueueUnavailable::Hold, OnQueueUnavailable::Fixed),
            })
    }

    /// A history of (seconds before now, replicas).
    fn history_of(now: Instant, items: &[(u64, i32)], keep: Duration) -> History {
        let mut h = History::default();
        let mut sorted = items.to_vec();
        sorted.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (ago, r) in sorted {
            h.record(now - Duration::from_secs(ago), r, keep);
        }
        h
    }

    proptest! {
        #[test]
        fn always_within_bounds(
            p in arb_policy(),
            depth in 0i64..10_000,
            current in 0i32..60,
            past in proptest::collection::vec((0u64..700, 0i32..60), 0..20),
            fail in any::<bool>(),
        ) {
            let now = Instant::now() + Duration::from_secs(1000);
            let h = history_of(now, &past, Duration::from_secs(700));
            let obs = if fail { Observation::Unavailable } else { Observation::Depth(depth) };
            let d = decide(obs, current, &p, &h, now);
            if fail {
                // Never down on a blind probe; up only to the fixed count.
                prop_assert!(d.desired >= current);
            } else {
                prop_assert!(d.desired >= p.min_replicas && d.desired <= p.max_replicas, "{d:?}");
            }
        }

        #[test]
        fn monotonic_in_depth(
            p in arb_policy(),
            a in 0i64..5_000,
            extra in 0i64..5_000,
            current in 0i32..40,
            past in proptest::collection::vec((0u64..700, 0i32..40), 0..20),
        ) {
            let now = Instant::now() + Duration::from_secs(1000);
            let h = history_of(now, &past, Duration::from_secs(700));
            let lo = decide(Observation::Depth(a), current, &p, &h, now);
            let hi = decide(Observation::Depth(a + extra), current, &p, &h, now);
            prop_assert!(lo.desired <= hi.desired, "{lo:?} > {hi:?}");
        }

        #[test]
        fn oscillation_inside_down_window_changes_nothing(
            per in 1i64..10,
            high in 10i64..200,
            lows in proptest::collection::vec(0i64..10, 1..50),
            window in 60u64..600,
        ) {
            let mut p = policy(0, 1000, per);
            p.scale_down_stabilization = Duration::from_secs(window);
            let t0 = Instant::now();
            let mut h = History::default();
            let mut current = step(Observation::Depth(high), 0, &p, &mut h, t0).desired;
            let top = current;
            // One reading a second, alternating low and high, all inside the window.
            for (i, low) in lows.iter().enumerate() {
                let at = t0 + Duration::from_secs(i as u64 + 1);
                if at - t0 >= Duration::from_secs(window) { break; }
                let depth = if i % 2 == 0 { *low } else { high };
                let d = step(Observation::Depth(depth), current, &p, &mut h, at);
                prop_assert_eq!(d.desired, top, "changed at +{}s: {:?}", i + 1, d);
                current = d.desired;
            }
        }

        /// Runs decide as every recommendation kept would: the same desired replicas at
        /// every step as a history that keeps each recommendation, for any readings.
        #[test]
        fn runs_decide_as_every_recommendation_kept(
            p in arb_policy(),
            readings in proptest::collection::vec((0i64..300, 0u64..90), 1..120),
        ) {
            let t0 = Instant::now();
            let (mut runs, mut all) = (History::default(), Vec::<(Instant, i32)>::new());
            let (mut a, mut b) = (0, 0);
            let mut at = t0;
            for (depth, gap) in readings {
                at += Duration::from_secs(gap);
                let keep = p.longest_window();
                all.retain(|(t, _)| at.saturating_duration_since(*t) <= keep);
                let naive = History { entries: all.iter().copied().collect() };
                let da = step(Observation::Depth(depth), a, &p, &mut runs, at);
                let db = decide(Observation::Depth(depth), b, &p, &naive, at);
                prop_assert_eq!(da, db);
                all.extend(db.recommendation.map(|r| (at, r)));
                prop_assert!(runs.len() <= all.len());
                (a, b) = (da.desired, db.desired);
            }
        }

        #[test]
        fn holds_on_probe_failure(
            p in arb_policy(),
            current in 0i32..60,
            past in proptest::collection::vec((0u64..700, 0i32..60), 0..20),
        ) {
            let mut p = p;
            p.on_queue_unavailable = OnQueueUnavailable::Hold;
            let now = Instant::now() + Duration::from_secs(1000);
            let mut h = history_of(now, &past, Duration::from_secs(700));
            let before = h.len();
            let d = step(Observation::Unavailable, current, &p, &mut h, now);
            prop_assert_eq!(d.desired, current);
            prop_assert_eq!(h.len(), before);
        }
    }
}
