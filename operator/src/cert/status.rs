//! The Certificate status after each outcome: pure, so both backends write the same thing and
//! an unchanged situation gives an equal status (written only when it changed).

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::timing::{self, Decision, DueReason};
use super::{CertError, CertInfo};
use crate::api::{CertificateSpec, CertificateStatus};

/// What happened in this round.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// A new certificate was stored.
    Issued(DueReason),
    /// The attempt failed; whatever was stored before is untouched.
    Failed(DueReason, &'a CertError),
    /// Nothing to do yet (the decision's wait).
    Waiting(Decision),
    /// The attempt runs elsewhere (a Kubernetes Job for ACME).
    Pending(DueReason, String),
}

/// Everything the status is computed from.
pub struct StatusInputs<'a> {
    pub spec: &'a CertificateSpec,
    pub generation: Option<i64>,
    pub previous: Option<&'a CertificateStatus>,
    /// What is stored after this round (the new certificate, or the old one).
    pub current: Option<&'a CertInfo>,
    /// The `berth.dev/renew-now` value seen in this round.
    pub renew_now: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// A Kubernetes time, to the second (status times never carry sub-second noise).
pub fn time(t: DateTime<Utc>) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Back from a Kubernetes time.
pub fn from_time(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), 0).unwrap_or_default()
}

fn condition(
    previous: Option<&CertificateStatus>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    let status = if status { "True" } else { "False" };
    // The transition time moves only when the status does.
    let old = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    crate::status::condition_since(old, type_, status, reason, message, generation, time(now))
}

/// A condition of a status, by type.
pub fn find<'a>(status: Option<&'a CertificateStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// The status after `outcome`.
pub fn compute(i: &StatusInputs, outcome: &Outcome) -> CertificateStatus {
    let prev = i.previous;
    let mut failed = prev.map(|p| p.failed_attempts).unwrap_or(0);
    let mut last_failure = prev.and_then(|p| p.last_failure_time.clone());
    let mut last_renew_now = prev.and_then(|p| p.last_renew_now.clone());
    let attempted = matches!(
        outcome,
        Outcome::Issued(_) | Outcome::Failed(..) | Outcome::Pending(..)
    );
    if attempted {
        // Any attempt consumes the renew-now value it saw: a new value means one more attempt.
        if let Some(v) = i.renew_now.filter(|v| !v.is_empty()) {
            last_renew_now = Some(v.to_string());
        }
    }
    let renewal = i.current.and_then(|c| {
        timing::renewal_time(c.not_before, c.not_after, i.spec.renew_before.as_deref()).ok()
    });

    let issuing = match outcome {
        Outcome::Issued(_) => {
            failed = 0;
            last_failure = None;
            let msg = match (i.current, renewal) {
                (Some(c), Some(r)) => format!(
                    "issued serial {}, valid until {}; renewal at {}",
                    c.serial_number,
                    c.not_after
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    r.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                _ => "issued".into(),
            };
            condition(prev, "Issuing", false, "Issued", msg, i.generation, i.now)
        }
        Outcome::Failed(due, e) => {
            failed += 1;
            last_failure = Some(time(i.now));
            let retry = i.now + timing::backoff(failed);
            let msg = format!(
                "attempt {failed} ({}) failed: {e}; next attempt at {} (set the annotation {} to a new value to try now)",
                due.reason(),
                retry.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                super::RENEW_NOW_ANNOTATION
            );
            condition(prev, "Issuing", false, e.reason(), msg, i.generation, i.now)
        }
        Outcome::Pending(due, what) => condition(
            prev,
            "Issuing",
            true,
            due.reason(),
            what.clone(),
            i.generation,
            i.now,
        ),
        Outcome::Waiting(Decision::Wait {
            backing_off: Some(_),
            ..
        }) => match find(prev, "Issuing") {
            // Backing off: the failure that caused it stays visible.
            Some(c) => c.clone(),
            None => condition(
                prev,
                "Issuing",
                false,
                "BackingOff",
                "waiting after a failed attempt".into(),
                i.generation,
                i.now,
            ),
        },
        Outcome::Waiting(_) => {
            let msg = renewal
                .map(|r| {
                    format!(
                        "up to date; renewal at {}",
                        r.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )
                })
                .unwrap_or_else(|| "up to date".into());
            match find(prev, "Issuing") {
                // Keep the message of the last issuance until something happens.
                Some(c) if c.status == "False" && c.reason == "Issued" => c.clone(),
                _ => condition(prev, "Issuing", false, "UpToDate", msg, i.generation, i.now),
            }
        }
    };

    let ready = match i.current {
        None => {
            let (reason, msg) = if failed > 0 {
                (issuing.reason.clone(), format!("no certificate yet: {}", issuing.message))
            } else {
                ("DoesNotExist".into(), format!("the certificate for {} is being issued into Secret {}", i.spec.dns_names.join(", "), i.spec.secret_name))
            };
            condition(prev, "Ready", false, &reason, msg, i.generation, i.now)
        }
        Some(c) if i.now >= c.not_after => condition(
            prev,
            "Ready",
            false,
            "Expired",
            format!("the certificate expired at {}: {}", c.not_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), issuing.message),
            i.generation,
            i.now,
        ),
        Some(c) if !c.covers(&i.spec.dns_names) => condition(
            prev,
            "Ready",
            false,
            "DNSNamesMismatch",
            format!("the stored certificate is for {} and a new one for {} is being issued", c.dns_names.join(", "), i.spec.dns_names.join(", ")),
            i.generation,
            i.now,
        ),
        Some(c) if failed > 0 => condition(
            prev,
            "Ready",
            true,
            "RenewalFailing",
            format!(
                "the current certificate is served until it expires at {}, but renewing it failed: {}",
                c.not_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                issuing.message
            ),
            i.generation,
            i.now,
        ),
        Some(c) => condition(
            prev,
            "Ready",
            true,
            "Ready",
            format!("valid until {}", c.not_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            i.generation,
            i.now,
        ),
    };

    CertificateStatus {
        not_before: i.current.map(|c| time(c.not_before)),
        not_after: i.current.map(|c| time(c.not_after)),
        renewal_time: renewal.map(time),
        serial_number: i.current.map(|c| c.serial_number.clone()),
        failed_attempts: failed,
        last_failure_time: last_failure,
        last_renew_now,
        conditions: vec![ready, issuing],
        observed_generation: i.generation,
    }
}

/// The decision inputs a status and a stored certificate give.
pub fn last_failure(status: Option<&CertificateStatus>) -> Option<DateTime<Utc>> {
    status?.last_failure_time.as_ref().map(from_time)
}

#[cfg(test)]
mod tests;
