//! Backup: schedule, database, destination and retention (also used by a stack's `backup`).

use super::values::{dns_label, positive_quantity};
use super::{object_name, Errors, FieldError, Path, Validate, MAX_LABEL};
use crate::api::backup::{Backup, BackupDatabase, BackupDestination, Retention};
use crate::api::schedule::{parse_cron, parse_time_zone};
use crate::api::units::parse_duration;

impl Validate for Backup {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Errors::default();
        object_name(&mut errs, self.metadata.name.as_deref(), MAX_LABEL);
        let spec = &self.spec;
        let path = Path::root().field("spec");
        errs.check(
            &path.field("schedule"),
            parse_cron(&spec.schedule).map(drop),
        );
        errs.check(
            &path.field("timeZone"),
            parse_time_zone(&spec.time_zone).map(drop),
        );
        database(&mut errs, &spec.database, &path.field("database"));
        destination(&mut errs, &spec.destination, &path.field("destination"));
        retention(&mut errs, &spec.retention, &path.field("retention"));
        errs.0
    }
}

fn database(errs: &mut Errors, db: &BackupDatabase, path: &Path) {
    if db.app_stack_ref.is_some() == db.url_secret_ref.is_some() {
        errs.push(
            path,
            "exactly one of appStackRef or urlSecretRef must be set",
        );
    }
    if let Some(stack) = &db.app_stack_ref {
        errs.check(&path.field("appStackRef"), dns_label(stack, MAX_LABEL));
    }
}

pub(super) fn destination(errs: &mut Errors, d: &BackupDestination, path: &Path) {
    if d.volume.is_some() == d.s3.is_some() {
        errs.push(path, "exactly one of volume or s3 must be set");
    }
    if let Some(v) = &d.volume {
        errs.check(
            &path.field("volume").field("size"),
            positive_quantity(&v.size),
        );
    }
    if let Some(s3) = &d.s3 {
        let p = path.field("s3");
        let bucket_ok = s3.bucket.len() >= 3
            && s3.bucket.len() <= 63
            && s3
                .bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !s3.bucket.starts_with(['-', '.'])
            && !s3.bucket.ends_with(['-', '.']);
        if !bucket_ok {
            errs.push(
                &p.field("bucket"),
                format!("must be an S3 bucket name: 3-63 lowercase letters, digits, '-' or '.' (got {:?})", s3.bucket),
            );
        }
        if s3.prefix.starts_with('/') {
            errs.push(
                &p.field("prefix"),
                format!(
                    "must not start with / (object keys are relative to the bucket; got {:?})",
                    s3.prefix
                ),
            );
        }
        let endpoint_ok = s3.endpoint.is_empty()
            || s3.endpoint.starts_with("http://")
            || s3.endpoint.starts_with("https://");
        if !endpoint_ok {
            errs.push(
                &p.field("endpoint"),
                format!("must be an http:// or https:// URL (got {:?})", s3.endpoint),
            );
        }
    }
}

pub(super) fn retention(errs: &mut Errors, r: &Retention, path: &Path) {
    if r.keep_last.is_none() && r.max_age.is_none() {
        errs.push(path, "set keepLast, maxAge or both");
    }
    if let Some(age) = &r.max_age {
        match parse_duration(age) {
            Err(e) => errs.push(&path.field("maxAge"), e),
            Ok(d) if d.as_secs() < 3600 => errs.push(&path.field("maxAge"), "must be at least 1h"),
            Ok(_) => {}
        }
    }
}
