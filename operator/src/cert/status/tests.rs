use chrono::{Duration, TimeZone};

use super::*;
use crate::cert::timing::Decision;

fn t(h: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::hours(h)
}

fn spec() -> CertificateSpec {
    serde_json::from_value(serde_json::json!({
        "secretName": "web-tls", "dnsNames": ["a.example"], "issuer": {"selfSigned": {}}, "duration": "90h"
    }))
    .unwrap()
}

fn info(serial: &str) -> CertInfo {
    CertInfo {
        not_before: t(0),
        not_after: t(90),
        serial_number: serial.into(),
        dns_names: vec!["a.example".into()],
        issuer: "CN=a".into(),
        subject: "CN=a".into(),
    }
}

fn cond<'a>(s: &'a CertificateStatus, t: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn issued_then_failures_then_success() {
    let spec = spec();
    let old = info("01");
    let issued = compute(
        &StatusInputs {
            spec: &spec,
            generation: Some(1),
            previous: None,
            current: Some(&old),
            renew_now: None,
            now: t(0),
        },
        &Outcome::Issued(DueReason::Missing),
    );
    assert_eq!(cond(&issued, "Ready").status, "True");
    assert_eq!(cond(&issued, "Issuing").reason, "Issued");
    assert_eq!(issued.serial_number.as_deref(), Some("01"));
    assert_eq!(issued.renewal_time, Some(time(t(60))));
    assert_eq!(issued.failed_attempts, 0);

    // Waiting changes nothing: the same status, so nothing is written.
    let wait = Outcome::Waiting(Decision::Wait {
        until: t(60),
        backing_off: None,
    });
    let same = compute(
        &StatusInputs {
            spec: &spec,
            generation: Some(1),
            previous: Some(&issued),
            current: Some(&old),
            renew_now: None,
            now: t(5),
        },
        &wait,
    );
    assert_eq!(same, issued);

    // The renewal fails: Ready stays True with a warning reason, the error is actionable.
    let err = CertError::ChallengeUnreachable {
        url: "http://a.example/.well-known/acme-challenge/tok".into(),
        detail: "connection refused".into(),
    };
    let failed = compute(
        &StatusInputs {
            spec: &spec,
            generation: Some(1),
            previous: Some(&issued),
            current: Some(&old),
            renew_now: None,
            now: t(60),
        },
        &Outcome::Failed(DueReason::Due, &err),
    );
    assert_eq!(failed.failed_attempts, 1);
    assert_eq!(failed.last_failure_time, Some(time(t(60))));
    assert_eq!(cond(&failed, "Ready").status, "True");
    assert_eq!(cond(&failed, "Ready").reason, "RenewalFailing");
    assert_eq!(cond(&failed, "Issuing").reason, "ChallengeUnreachable");
    assert!(cond(&failed, "Issuing")
        .message
        .contains("http://a.example/.well-known/acme-challenge/tok"));
    assert!(
        cond(&failed, "Issuing")
            .message
            .contains(&t(61).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "{}",
        cond(&failed, "Issuing").message
    );
    // Ready's transition time did not move: it stayed True.
    assert_eq!(
        cond(&failed, "Ready").last_transition_time,
        cond(&issued, "Ready").last_transition_time
    );

    // Backing off keeps the failure visible and the status unchanged.
    let backing = compute(
        &StatusInputs {
            spec: &spec,
            generation: Some(1),
            previous: Some(&failed),
            current: Some(&old),
            renew_now: None,
            now: t(60) + Duration::minutes(10),
        },
        &Outcome::Waiting(Decision::Wait {
            until: t(61),
            backing_off: Some(DueReason::Due),
        }),
    );
    assert_eq!(backing, failed);

    let second = compute(
        &StatusInputs {
            spec: &spec,
            generation: Some(1),
            previous: Some(&failed),
            current: Some(&old),
            renew_now: Some("now-1"),
            now: t(61),
        },
        &Outcome::Failed(DueReason::RenewNow, &err),
    );
    assert_eq!(second.failed_attempts, 2);
    assert_eq!(second.last_renew_now.as_deref(), Some("now-1"));

    // Expired while still failing: Ready goes False.
    let expired = compute(
        &StatusInputs {
            spec: &spec,
            generation: Some(1),
            previous: Some(&second),
            current: Some(&old),
            renew_now: Some("now-1"),
            now: t(91),
        },
        &Outcome::Failed(DueReason::Expired, &err),
    );
    assert_eq!(cond(&expired, "Ready").status, "False");
    assert_eq!(cond(&expired, "Ready").reason, "Expired");

    let new = CertInfo {
        not_before: t(92),
        not_after: t(182),
        ..info("02")
    };
    let renewed = compute(
        &StatusInputs {
            spec: &spec,
            generation: Some(1),
            previous: Some(&expired),
            current: Some(&new),
            renew_now: None,
            now: t(92),
        },
        &Outcome::Issued(DueReason::Expired),
    );
    assert_eq!(renewed.failed_attempts, 0);
    assert_eq!(renewed.last_failure_time, None);
    assert_eq!(renewed.serial_number.as_deref(), Some("02"));
    assert_eq!(cond(&renewed, "Ready").status, "True");
}

#[test]
fn nothing_stored_and_failing_says_why() {
    let spec = spec();
    let err = CertError::BadCa {
        source_name: "Secret ns/ca".into(),
        detail: "tls.key is not the private key of tls.crt (wrong key for this CA)".into(),
    };
    let st = compute(
        &StatusInputs {
            spec: &spec,
            generation: Some(2),
            previous: None,
            current: None,
            renew_now: None,
            now: t(0),
        },
        &Outcome::Failed(DueReason::Missing, &err),
    );
    let ready = cond(&st, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidCA")
    );
    assert!(ready.message.contains("wrong key"));
    assert_eq!(ready.observed_generation, Some(2));
    assert_eq!(st.not_after, None);
}

#[test]
fn pending_job_sets_issuing_true() {
    let spec = spec();
    let st = compute(
        &StatusInputs {
            spec: &spec,
            generation: Some(1),
            previous: None,
            current: None,
            renew_now: None,
            now: t(0),
        },
        &Outcome::Pending(DueReason::Missing, "job web-tls-abc issues it".into()),
    );
    assert_eq!(cond(&st, "Issuing").status, "True");
    assert_eq!(cond(&st, "Ready").reason, "DoesNotExist");
}
