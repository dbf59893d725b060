//! Certificate: names, issuer, lifetime and renewal.

use super::values::{dns_name, dns_subdomain};
use super::{object_name, Errors, FieldError, Path, Validate};
use crate::api::certificate::{CertIssuer, Certificate};
use crate::api::schedule::parse_cron;
use crate::api::units::parse_duration;

impl Validate for Certificate {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Errors::default();
        object_name(&mut errs, self.metadata.name.as_deref(), 253);
        let spec = &self.spec;
        let path = Path::root().field("spec");
        errs.check(&path.field("secretName"), dns_subdomain(&spec.secret_name));
        let wildcard_ok = spec.issuer.acme.is_none();
        for (i, name) in spec.dns_names.iter().enumerate() {
            let p = path.field("dnsNames").index(i);
            if name.starts_with("*.") && !wildcard_ok {
                errs.push(&p, "wildcard names need the DNS-01 challenge, which berth does not support: list the names, or use a ca or selfSigned issuer");
            } else {
                errs.check(&p, dns_name(name, true));
            }
        }
        cert_issuer(&mut errs, &spec.issuer, &path.field("issuer"));
        let lifetime = match parse_duration(&spec.duration) {
            Ok(d) if d.as_secs() < 3600 => {
                errs.push(&path.field("duration"), "must be at least 1h");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                errs.push(&path.field("duration"), e);
                None
            }
        };
        if let Some(rb) = &spec.renew_before {
            match parse_duration(rb) {
                Err(e) => errs.push(&path.field("renewBefore"), e),
                Ok(before) => {
                    if lifetime.is_some_and(|l| before >= l) {
                        errs.push(
                            &path.field("renewBefore"),
                            format!(
                                "must be shorter than duration ({rb} is not shorter than {}): the certificate would be renewed as soon as it is issued",
                                spec.duration
                            ),
                        );
                    }
                }
            }
        }
        errs.check(
            &path.field("renewalSchedule"),
            parse_cron(&spec.renewal_schedule).map(drop),
        );
        errs.0
    }
}

pub(super) fn cert_issuer(errs: &mut Errors, issuer: &CertIssuer, path: &Path) {
    let set = [
        issuer.acme.is_some(),
        issuer.self_signed.is_some(),
        issuer.ca.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if set != 1 {
        errs.push(path, "exactly one of acme, selfSigned or ca must be set");
    }
    if let Some(acme) = &issuer.acme {
        let email = &acme.email;
        let ok = email
            .split_once('@')
            .is_some_and(|(user, host)| !user.is_empty() && dns_name(host, false).is_ok());
        if !ok {
            errs.push(
                &path.field("acme").field("email"),
                format!("must be an email address (got {email:?})"),
            );
        }
    }
    if let Some(ca) = &issuer.ca {
        errs.check(
            &path.field("ca").field("secretName"),
            dns_subdomain(&ca.secret_name),
        );
    }
}
