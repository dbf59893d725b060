//! Pure timing decisions: when to renew, how long to back off, whether to issue now.

use chrono::{DateTime, Duration, Utc};

use super::{CertError, CertInfo};
use crate::api::units::parse_duration;

/// The first backoff after a failed attempt; it doubles per further failure.
pub const BACKOFF_BASE: Duration = Duration::hours(1);
/// The longest backoff (cert-manager's cap).
pub const BACKOFF_MAX: Duration = Duration::hours(32);

/// How long before expiry a certificate of `lifetime` is renewed: `renew_before` when it is set
/// and shorter than the lifetime (an ACME server may hand out shorter lifetimes than the spec
/// expected), one third of the lifetime otherwise.
pub fn renew_before(lifetime: Duration, renew_before: Option<&str>) -> Result<Duration, CertError> {
    let default = lifetime / 3;
    let Some(text) = renew_before.filter(|s| !s.trim().is_empty()) else {
        return Ok(default);
    };
    let d = parse_duration(text).map_err(|e| CertError::Spec(format!("renewBefore: {e}")))?;
    let d = Duration::from_std(d).map_err(|e| CertError::Spec(format!("renewBefore: {e}")))?;
    Ok(if d < lifetime { d } else { default })
}

/// When a certificate valid from `not_before` to `not_after` is renewed.
pub fn renewal_time(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    spec_renew_before: Option<&str>,
) -> Result<DateTime<Utc>, CertError> {
    let lifetime = not_after - not_before;
    Ok(not_after - renew_before(lifetime, spec_renew_before)?)
}

/// The wait after `failed` failed attempts in a row: none after none, then 1h·2^(n−1) up to 32h.
pub fn backoff(failed: i32) -> Duration {
    if failed <= 0 {
        return Duration::zero();
    }
    let shift = (failed - 1).min(6) as u32;
    (BACKOFF_BASE * (1 << shift)).min(BACKOFF_MAX)
}

/// Why a certificate needs issuing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DueReason {
    /// Nothing is stored yet.
    Missing,
    /// What is stored is not a certificate with its key.
    Invalid,
    /// The stored certificate does not cover the spec's dnsNames.
    NamesChanged,
    /// The renewal time has come.
    Due,
    /// The certificate has expired.
    Expired,
    /// The `berth.dev/renew-now` annotation has a new value.
    RenewNow,
}

impl DueReason {
    /// CamelCase, for the Issuing condition.
    pub fn reason(self) -> &'static str {
        match self {
            DueReason::Missing => "DoesNotExist",
            DueReason::Invalid => "InvalidCertificate",
            DueReason::NamesChanged => "DNSNamesChanged",
            DueReason::Due => "Renewing",
            DueReason::Expired => "Expired",
            DueReason::RenewNow => "ManuallyTriggered",
        }
    }
}

/// What to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Make one issuance attempt now.
    Issue(DueReason),
    /// Nothing to do before `until`; `backing_off` names the reason it is due but waiting.
    Wait {
        until: DateTime<Utc>,
        backing_off: Option<DueReason>,
    },
}

/// What the decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub now: DateTime<Utc>,
    /// The stored certificate: `None` when there is none, `Some(Err)` when it is unreadable.
    pub current: Option<Result<&'a CertInfo, ()>>,
    pub dns_names: &'a [String],
    pub renew_before: Option<&'a str>,
    pub failed_attempts: i32,
    pub last_failure: Option<DateTime<Utc>>,
    /// The `berth.dev/renew-now` annotation and the value last acted on.
    pub renew_now: Option<&'a str>,
    pub last_renew_now: Option<&'a str>,
}

/// Decides whether to issue now. A new renew-now value always wins; otherwise a due certificate
/// waits out the backoff of earlier failures.
pub fn decide(i: &Inputs) -> Result<Decision, CertError> {
    if let Some(v) = i.renew_now.filter(|v| !v.is_empty()) {
        if Some(v) != i.last_renew_now {
            return Ok(Decision::Issue(DueReason::RenewNow));
        }
    }
    let (reason, renewal) = match i.current {
        None => (Some(DueReason::Missing), None),
        Some(Err(())) => (Some(DueReason::Invalid), None),
        Some(Ok(info)) => {
            let at = renewal_time(info.not_before, info.not_after, i.renew_before)?;
            let reason = if !info.covers(i.dns_names) {
                Some(DueReason::NamesChanged)
            } else if i.now >= info.not_after {
                Some(DueReason::Expired)
            } else if i.now >= at {
                Some(DueReason::Due)
            } else {
                None
            };
            (reason, Some(at))
        }
    };
    let Some(reason) = reason else {
        return Ok(Decision::Wait {
            until: renewal.unwrap_or(i.now),
            backing_off: None,
        });
    };
    if i.failed_attempts > 0 {
        if let Some(failed_at) = i.last_failure {
            let retry = failed_at + backoff(i.failed_attempts);
            if i.now < retry {
                return Ok(Decision::Wait {
                    until: retry,
                    backing_off: Some(reason),
                });
            }
        }
    }
    Ok(Decision::Issue(reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::hours(h)
    }

    fn info(from: i64, to: i64, names: &[&str]) -> CertInfo {
        CertInfo {
            not_before: t(from),
            not_after: t(to),
            serial_number: "01".into(),
            dns_names: names.iter().map(|s| s.to_string()).collect(),
            issuer: "CN=test".into(),
            subject: "CN=test".into(),
        }
    }

    #[test]
    fn backoff_table() {
        let table = [
            (0, 0),
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 8),
            (5, 16),
            (6, 32),
            (7, 32),
            (40, 32),
            (-1, 0),
        ];
        for (n, hours) in table {
            assert_eq!(backoff(n), Duration::hours(hours), "after {n} failures");
        }
    }

    #[test]
    fn renew_before_table() {
        let day = Duration::days(1);
        let table: [(Duration, Option<&str>, Duration); 5] = [
            (day * 90, None, day * 30),
            (day * 90, Some(""), day * 30),
            (day * 90, Some("720h"), day * 30),
            (day * 90, Some("24h"), day),
            // Not shorter than the lifetime: the default instead of renewing at once forever.
            (day, Some("48h"), Duration::hours(8)),
        ];
        for (lifetime, spec, want) in table {
            assert_eq!(renew_before(lifetime, spec).unwrap(), want, "{spec:?}");
        }
        assert!(renew_before(day, Some("soon")).is_err());
    }

    #[test]
    fn decision_table() {
        let names = vec!["a.example".to_string()];
        let good = info(0, 90 * 24, &["a.example"]);
        let renewal = t(60 * 24);
        let other = info(0, 90 * 24, &["b.example"]);
        struct Case<'a> {
            what: &'a str,
            now: DateTime<Utc>,
            current: Option<Result<&'a CertInfo, ()>>,
            failed: i32,
            last_failure: Option<DateTime<Utc>>,
            renew_now: Option<&'a str>,
            last_renew_now: Option<&'a str>,
            want: Decision,
        }
        let wait = |until| Decision::Wait {
            until,
            backing_off: None,
        };
        let cases = [
            Case {
                what: "nothing stored",
                now: t(0),
                current: None,
                failed: 0,
                last_failure: None,
                renew_now: None,
                last_renew_now: None,
                want: Decision::Issue(DueReason::Missing),
            },
            Case {
                what: "unreadable",
                now: t(0),
                current: Some(Err(())),
                failed: 0,
                last_failure: None,
                renew_now: None,
                last_renew_now: None,
                want: Decision::Issue(DueReason::Invalid),
            },
            Case {
                what: "fresh",
                now: t(1),
                current: Some(Ok(&good)),
                failed: 0,
                last_failure: None,
                renew_now: None,
                last_renew_now: None,
                want: wait(renewal),
            },
            Case {
                what: "just before renewal",
                now: renewal - Duration::seconds(1),
                current: Some(Ok(&good)),
                failed: 0,
                last_failure: None,
                renew_now: None,
                last_renew_now: None,
                want: wait(renewal),
            },
            Case {
                what: "at renewal",
                now: renewal,
                current: Some(Ok(&good)),
                failed: 0,
                last_failure: None,
                renew_now: None,
                last_renew_now: None,
                want: Decision::Issue(DueReason::Due),
            },
            Case {
                what: "expired",
                now: t(91 * 24),
                current: Some(Ok(&good)),
                failed: 0,
                last_failure: None,
                renew_now: None,
                last_renew_now: None,
                want: Decision::Issue(DueReason::Expired),
            },
            Case {
                what: "names changed",
                now: t(1),
                current: Some(Ok(&other)),
                failed: 0,
                last_failure: None,
                renew_now: None,
                last_renew_now: None,
                want: Decision::Issue(DueReason::NamesChanged),
            },
            Case {
                what: "due, 1 failure 30m ago: backs off 1h",
                now: renewal + Duration::hours(1),
                current: Some(Ok(&good)),
                failed: 1,
                last_failure: Some(renewal + Duration::minutes(30)),
                renew_now: None,
                last_renew_now: None,
                want: Decision::Wait {
                    until: renewal + Duration::minutes(90),
                    backing_off: Some(DueReason::Due),
                },
            },
            Case {
                what: "due, 1 failure 1h ago: retries",
                now: renewal + Duration::hours(2),
                current: Some(Ok(&good)),
                failed: 1,
                last_failure: Some(renewal + Duration::hours(1)),
                renew_now: None,
                last_renew_now: None,
                want: Decision::Issue(DueReason::Due),
            },
            Case {
                what: "due, 3 failures: 4h",
                now: renewal + Duration::hours(3),
                current: Some(Ok(&good)),
                failed: 3,
                last_failure: Some(renewal),
                renew_now: None,
                last_renew_now: None,
                want: Decision::Wait {
                    until: renewal + Duration::hours(4),
                    backing_off: Some(DueReason::Due),
                },
            },
            Case {
                what: "missing, failing: backs off too",
                now: t(0),
                current: None,
                failed: 2,
                last_failure: Some(t(0)),
                renew_now: None,
                last_renew_now: None,
                want: Decision::Wait {
                    until: t(2),
                    backing_off: Some(DueReason::Missing),
                },
            },
            Case {
                what: "renew-now new value skips backoff",
                now: renewal + Duration::hours(1),
                current: Some(Ok(&good)),
                failed: 5,
                last_failure: Some(renewal),
                renew_now: Some("2"),
                last_renew_now: Some("1"),
                want: Decision::Issue(DueReason::RenewNow),
            },
            Case {
                what: "renew-now on a fresh cert",
                now: t(1),
                current: Some(Ok(&good)),
                failed: 0,
                last_failure: None,
                renew_now: Some("x"),
                last_renew_now: None,
                want: Decision::Issue(DueReason::RenewNow),
            },
            Case {
                what: "renew-now already handled",
                now: t(1),
                current: Some(Ok(&good)),
                failed: 0,
                last_failure: None,
                renew_now: Some("x"),
                last_renew_now: Some("x"),
                want: wait(renewal),
            },
            Case {
                what: "renew-now handled, still backing off",
                now: renewal,
                current: Some(Ok(&good)),
                failed: 1,
                last_failure: Some(renewal),
                renew_now: Some("x"),
                last_renew_now: Some("x"),
                want: Decision::Wait {
                    until: renewal + Duration::hours(1),
                    backing_off: Some(DueReason::Due),
                },
            },
        ];
        for c in cases {
            let got = decide(&Inputs {
                now: c.now,
                current: c.current,
                dns_names: &names,
                renew_before: None,
                failed_attempts: c.failed,
                last_failure: c.last_failure,
                renew_now: c.renew_now,
                last_renew_now: c.last_renew_now,
            })
            .unwrap();
            assert_eq!(got, c.want, "{}", c.what);
        }
    }
}
