//! One round of the engine over whatever store a backend has: read what is stored, decide,
//! issue (when due) with a signer, and compute the status. The store is written only with a
//! complete new pair, so a failed attempt leaves the served certificate untouched.

use chrono::{DateTime, Utc};

use super::status::{self, Outcome, StatusInputs};
use super::timing::{self, Decision, DueReason, Inputs};
use super::{inspect, issue, CertError, CertInfo, Issued, KeyChoice};
use crate::api::{CertificateSpec, CertificateStatus};

/// What a store holds.
#[derive(Clone, Default)]
pub struct Stored {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The stored pair's facts: `None` without one, `Err` when it is unreadable or mismatched.
pub fn read(stored: Option<&Stored>) -> Option<Result<CertInfo, CertError>> {
    stored.map(|s| inspect::inspect_pair(&s.cert_pem, &s.key_pem))
}

/// The decision for a Certificate given what is stored and its status.
pub fn decide(
    spec: &CertificateSpec,
    previous: Option<&CertificateStatus>,
    current: Option<&Result<CertInfo, CertError>>,
    renew_now: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Decision, CertError> {
    let current = current.map(|r| r.as_ref().map_err(|_| ()));
    timing::decide(&Inputs {
        now,
        current,
        dns_names: &spec.dns_names,
        renew_before: spec.renew_before.as_deref(),
        failed_attempts: previous.map(|p| p.failed_attempts).unwrap_or(0),
        last_failure: status::last_failure(previous),
        renew_now,
        last_renew_now: previous.and_then(|p| p.last_renew_now.as_deref()),
    })
}

/// The CA pair of a `ca` issuer, read by the backend.
pub struct CaPair<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
    /// Where it came from, for messages (e.g. `Secret prod/internal-ca`).
    pub source: &'a str,
}

/// Issues locally (`selfSigned`, or `ca` with `ca` given).
pub fn issue_local(
    spec: &CertificateSpec,
    ca: Option<&CaPair>,
    stored: Option<&Stored>,
    now: DateTime<Utc>,
) -> Result<Issued, CertError> {
    let key = KeyChoice::of(spec).key(stored.map(|s| s.key_pem.as_str()))?;
    if spec.issuer.self_signed.is_some() {
        issue::self_signed(spec, &key, now)
    } else if spec.issuer.ca.is_some() {
        let ca = ca.ok_or_else(|| CertError::Spec("the CA key pair was not read".into()))?;
        issue::ca_signed(spec, &key, ca.cert_pem, ca.key_pem, ca.source, now)
    } else {
        Err(CertError::Spec(
            "ACME certificates are issued by `berth cert renew`, not locally".into(),
        ))
    }
}

/// The status after a round: `after` is what is stored now.
pub fn status_after(
    spec: &CertificateSpec,
    generation: Option<i64>,
    previous: Option<&CertificateStatus>,
    after: Option<&Result<CertInfo, CertError>>,
    renew_now: Option<&str>,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> CertificateStatus {
    let current = after.and_then(|r| r.as_ref().ok());
    status::compute(
        &StatusInputs {
            spec,
            generation,
            previous,
            current,
            renew_now,
            now,
        },
        outcome,
    )
}

/// The reason of a decision that issues, if it does.
pub fn issuing(d: &Decision) -> Option<DueReason> {
    match d {
        Decision::Issue(r) => Some(*r),
        Decision::Wait { .. } => None,
    }
}
