//! Semantic validation: what a schema cannot say well (durations, cron schedules, time zones,
//! DNS names, image references, quantities, names unique across a stack, references that need
//! each other), plus a mirror of every CEL rule of the CRDs so `berth validate` offline agrees
//! with the API server. Every error names its field path.

use std::collections::HashMap;
use std::fmt;

use super::appstack::{ApiSpec, AppStack, AppStackSpec, PostgresSpec, RedisSpec, StackBackup};
use super::backup::{Backup, BackupDatabase, BackupDestination, Retention};
use super::certificate::{CertIssuer, Certificate};
use super::common::{EnvVar, HealthCheck, Resources};
use super::schedule::{parse_cron, parse_time_zone};
use super::units::{parse_duration, parse_quantity};
use super::worker::{QueueSpec, QueueType, Scaling, Worker};

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with list indexes, e.g. `spec.workers[1].scaling.maxReplicas`.
    pub path: String,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A field path under construction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    /// The object itself.
    pub fn root() -> Self {
        Path(String::new())
    }
    /// A named field below this one.
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }
    /// An item of the list at this path.
    pub fn index(&self, i: usize) -> Self {
        Path(format!("{}[{i}]", self.0))
    }
    /// Whether this is the object itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
    /// An error at this path.
    pub fn error(&self, message: impl Into<String>) -> FieldError {
        FieldError {
            path: self.0.clone(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Collects errors while walking an object.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: &Path, message: impl Into<String>) {
        self.0.push(path.error(message));
    }
    fn check(&mut self, path: &Path, result: Result<(), String>) {
        if let Err(message) = result {
            self.push(path, message);
        }
    }
}

/// Component names berth itself uses inside a stack.
pub const RESERVED_COMPONENT_NAMES: [&str; 4] = ["api", "postgres", "redis", "proxy"];

/// Longest name of a Kubernetes object that must be a DNS label (Services, pod host names).
const MAX_LABEL: usize = 63;

/// Semantic validation of a kind.
pub trait Validate {
    /// Every semantic error in the object; empty when it is valid.
    fn validate(&self) -> Vec<FieldError>;
}

fn object_name(errs: &mut Errors, name: Option<&str>, max: usize) {
    let path = Path::root().field("metadata").field("name");
    match name {
        None => errs.push(&path, "required field is missing"),
        Some(n) => errs.check(&path, dns_label(n, max)),
    }
}

impl Validate for AppStack {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Errors::default();
        // `<stack>-postgres-headless` and similar child names must stay DNS labels.
        object_name(&mut errs, self.metadata.name.as_deref(), 40);
        let stack = self.metadata.name.clone().unwrap_or_default();
        appstack_spec(&mut errs, &stack, &self.spec, &Path::root().field("spec"));
        errs.0
    }
}

fn appstack_spec(errs: &mut Errors, stack: &str, spec: &AppStackSpec, path: &Path) {
    if let Some(domain) = &spec.domain {
        errs.check(&path.field("domain"), dns_name(domain, false));
    }
    if let Some(tls) = &spec.tls {
        let p = path.field("tls");
        if spec.domain.is_none() {
            errs.push(
                &p,
                "tls needs spec.domain: set the domain the certificate is for, or remove tls",
            );
        }
        match (&tls.certificate_ref, &tls.issuer) {
            (Some(_), Some(_)) | (None, None) => {
                errs.push(&p, "exactly one of certificateRef or issuer must be set")
            }
            (Some(name), None) => errs.check(&p.field("certificateRef"), dns_subdomain(name)),
            (None, Some(issuer)) => cert_issuer(errs, issuer, &p.field("issuer")),
        }
    }
    let has_postgres = spec.postgres.is_some();
    let has_redis = spec.redis.is_some();
    api_spec(errs, &spec.api, &path.field("api"), has_postgres, has_redis);

    // Every component name is a host name inside the stack; they must not collide.
    let mut names: HashMap<&str, Path> = HashMap::new();
    for (i, w) in spec.workers.iter().enumerate() {
        let p = path.field("workers").index(i);
        component_name(errs, stack, &w.name, &p.field("name"), &mut names);
        errs.check(&p.field("image"), image_ref(&w.image));
        env_list(
            errs,
            &w.env,
            &p.field("env"),
            has_postgres,
            has_redis || w.queue.redis.is_some(),
        );
        resources(errs, w.resources.as_ref(), &p.field("resources"));
        queue(errs, &w.queue, &p.field("queue"));
        if w.queue.redis.is_none() && !has_redis {
            errs.push(
                &p.field("queue"),
                "needs a Redis: add spec.redis to the stack or set queue.redis.urlSecretRef",
            );
        }
        if let Some(s) = &w.scaling {
            scaling(errs, s, &p.field("scaling"));
        }
    }
    for (i, s) in spec.services.iter().enumerate() {
        let p = path.field("services").index(i);
        component_name(errs, stack, &s.name, &p.field("name"), &mut names);
        errs.check(&p.field("image"), image_ref(&s.image));
        env_list(errs, &s.env, &p.field("env"), has_postgres, has_redis);
        resources(errs, s.resources.as_ref(), &p.field("resources"));
        if let Some(storage) = &s.storage {
            errs.check(&p.field("storage"), positive_quantity(storage));
        }
        if let Some(h) = &s.health_check {
            health_check(errs, h, &p.field("healthCheck"));
        }
    }
    if let Some(pg) = &spec.postgres {
        postgres(errs, pg, &path.field("postgres"));
    }
    if let Some(redis) = &spec.redis {
        redis_spec(errs, redis, &path.field("redis"));
    }
    if let Some(b) = &spec.backup {
        let p = path.field("backup");
        if !has_postgres {
            errs.push(
                &p,
                "needs spec.postgres: there is no database in this stack to back up",
            );
        }
        stack_backup(errs, b, &p);
    }
}

fn component_name<'a>(
    errs: &mut Errors,
    stack: &str,
    name: &'a str,
    path: &Path,
    seen: &mut HashMap<&'a str, Path>,
) {
    if let Err(e) = dns_label(name, MAX_LABEL) {
        errs.push(path, e);
        return;
    }
    if RESERVED_COMPONENT_NAMES.contains(&name) {
        errs.push(
            path,
            format!("{name:?} is used by berth itself (reserved: api, postgres, redis, proxy); choose another name"),
        );
    }
    if let Some(first) = seen.get(name) {
        errs.push(
            path,
            format!("{name:?} is already used by {first}; worker and service names must be unique in a stack"),
        );
    } else {
        seen.insert(name, path.clone());
    }
    let child = format!("{stack}-{name}");
    if child.len() > MAX_LABEL {
        errs.push(
            path,
            format!(
                "the child name {child:?} would be {} characters long; stack name and component name together must stay within {MAX_LABEL}",
                child.len()
            ),
        );
    }
}

fn api_spec(errs: &mut Errors, api: &ApiSpec, path: &Path, has_pg: bool, has_redis: bool) {
    errs.check(&path.field("image"), image_ref(&api.image));
    env_list(errs, &api.env, &path.field("env"), has_pg, has_redis);
    resources(errs, api.resources.as_ref(), &path.field("resources"));
    if let Some(h) = &api.health_check {
        health_check(errs, h, &path.field("healthCheck"));
    }
    if let Some(size) = &api.max_body_size {
        errs.check(&path.field("maxBodySize"), quantity(size));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, r) in api.routes.iter().enumerate() {
        let p = path.field("routes").index(i).field("path");
        errs.check(&p, route_path(&r.path));
        if let Some(first) = seen.insert(r.path.as_str(), i) {
            errs.push(
                &p,
                format!("duplicate route: routes[{first}] has the same path"),
            );
        }
    }
}

fn env_list(errs: &mut Errors, env: &[EnvVar], path: &Path, has_pg: bool, has_redis: bool) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, e) in env.iter().enumerate() {
        let p = path.index(i);
        if e.value.is_some() == e.secret_key_ref.is_some() {
            errs.push(&p, "exactly one of value or secretKeyRef must be set");
        }
        if let Some(first) = seen.insert(e.name.as_str(), i) {
            errs.push(
                &p.field("name"),
                format!("duplicate variable: env[{first}] has the same name"),
            );
        }
        let injected = (e.name == "DATABASE_URL" && has_pg) || (e.name == "REDIS_URL" && has_redis);
        if injected {
            errs.push(
                &p.field("name"),
                format!(
                    "{} is set by berth from the stack's own server; remove it here",
                    e.name
                ),
            );
        }
    }
}

fn resources(errs: &mut Errors, r: Option<&Resources>, path: &Path) {
    let Some(r) = r else { return };
    if let Some(cpu) = &r.cpu {
        errs.check(&path.field("cpu"), positive_quantity(cpu));
    }
    if let Some(mem) = &r.memory {
        errs.check(&path.field("memory"), positive_quantity(mem));
    }
}

fn health_check(errs: &mut Errors, h: &HealthCheck, path: &Path) {
    errs.check(&path.field("path"), route_path(&h.path));
    if h.timeout_seconds > h.interval_seconds {
        errs.push(
            &path.field("timeoutSeconds"),
            format!(
                "must be <= intervalSeconds ({} > {})",
                h.timeout_seconds, h.interval_seconds
            ),
        );
    }
}

fn postgres(errs: &mut Errors, pg: &PostgresSpec, path: &Path) {
    if pg.external.is_some()
        && (pg.version.is_some()
            || pg.image.is_some()
            || pg.database.is_some()
            || pg.storage.is_some())
    {
        errs.push(
            &path.field("external"),
            "external excludes version, image, database and storage: an external database is not deployed by berth",
        );
    }
    if pg.version.is_some() && pg.image.is_some() {
        errs.push(
            &path.field("image"),
            "set either version or image, not both",
        );
    }
    if let Some(image) = &pg.image {
        errs.check(&path.field("image"), image_ref(image));
    }
    if let Some(storage) = &pg.storage {
        errs.check(&path.field("storage"), positive_quantity(storage));
    }
    resources(errs, pg.resources.as_ref(), &path.field("resources"));
}

fn redis_spec(errs: &mut Errors, r: &RedisSpec, path: &Path) {
    if r.external.is_some()
        && (r.version.is_some()
            || r.image.is_some()
            || r.max_memory.is_some()
            || r.storage.is_some())
    {
        errs.push(
            &path.field("external"),
            "external excludes version, image, maxMemory and storage: an external Redis is not deployed by berth",
        );
    }
    if r.version.is_some() && r.image.is_some() {
        errs.push(
            &path.field("image"),
            "set either version or image, not both",
        );
    }
    if let Some(image) = &r.image {
        errs.check(&path.field("image"), image_ref(image));
    }
    if let Some(m) = &r.max_memory {
        errs.check(&path.field("maxMemory"), positive_quantity(m));
    }
    if let Some(storage) = &r.storage {
        errs.check(&path.field("storage"), positive_quantity(storage));
    }
    resources(errs, r.resources.as_ref(), &path.field("resources"));
}

fn stack_backup(errs: &mut Errors, b: &StackBackup, path: &Path) {
    errs.check(&path.field("schedule"), parse_cron(&b.schedule).map(drop));
    errs.check(
        &path.field("timeZone"),
        parse_time_zone(&b.time_zone).map(drop),
    );
    if let Some(d) = &b.destination {
        destination(errs, d, &path.field("destination"));
    }
    retention(errs, &b.retention, &path.field("retention"));
}

fn queue(errs: &mut Errors, q: &QueueSpec, path: &Path) {
    if q.queue_type == QueueType::Stream && q.consumer_group.as_deref().unwrap_or("").is_empty() {
        errs.push(
            &path.field("consumerGroup"),
            "a stream queue needs consumerGroup: its depth is the group's lag plus pending entries",
        );
    }
    if q.name.trim().is_empty() {
        errs.push(&path.field("name"), "must not be empty");
    }
}

fn scaling(errs: &mut Errors, s: &Scaling, path: &Path) {
    if s.max_replicas < s.min_replicas {
        errs.push(
            &path.field("maxReplicas"),
            format!(
                "must be >= minReplicas ({} < {})",
                s.max_replicas, s.min_replicas
            ),
        );
    }
    match parse_duration(&s.poll_interval) {
        Err(e) => errs.push(&path.field("pollInterval"), e),
        Ok(d) if d.as_millis() < 100 => {
            errs.push(&path.field("pollInterval"), "must be at least 100ms")
        }
        Ok(_) => {}
    }
    errs.check(
        &path.field("scaleUpStabilization"),
        parse_duration(&s.scale_up_stabilization).map(drop),
    );
    errs.check(
        &path.field("scaleDownStabilization"),
        parse_duration(&s.scale_down_stabilization).map(drop),
    );
    if let Some(n) = s.on_queue_unavailable.as_ref().map(|q| q.replicas) {
        if n > s.max_replicas {
            errs.push(
                &path.field("onQueueUnavailable").field("replicas"),
                format!("must be <= maxReplicas ({n} > {})", s.max_replicas),
            );
        }
    }
}

impl Validate for Worker {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Errors::default();
        object_name(&mut errs, self.metadata.name.as_deref(), MAX_LABEL);
        let spec = &self.spec;
        let path = Path::root().field("spec");
        errs.check(&path.field("image"), image_ref(&spec.image));
        let has_stack = spec.app_stack_ref.is_some();
        env_list(&mut errs, &spec.env, &path.field("env"), false, false);
        resources(&mut errs, spec.resources.as_ref(), &path.field("resources"));
        if let Some(stack) = &spec.app_stack_ref {
            errs.check(&path.field("appStackRef"), dns_label(stack, MAX_LABEL));
        }
        queue(&mut errs, &spec.queue, &path.field("queue"));
        if !has_stack && spec.queue.redis.is_none() {
            errs.push(
                &path,
                "a worker needs a Redis: set appStackRef or queue.redis",
            );
        }
        if let Some(s) = &spec.scaling {
            scaling(&mut errs, s, &path.field("scaling"));
        }
        errs.0
    }
}

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

fn cert_issuer(errs: &mut Errors, issuer: &CertIssuer, path: &Path) {
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

fn destination(errs: &mut Errors, d: &BackupDestination, path: &Path) {
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

fn retention(errs: &mut Errors, r: &Retention, path: &Path) {
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

// ---- value rules ----

/// A DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`) of at most `max` characters.
pub fn dns_label(s: &str, max: usize) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a DNS label: at most {max} lowercase letters, digits or '-', starting and ending with a letter or digit (got {s:?})"
        ))
    }
}

/// A DNS-1123 subdomain, the rule for most Kubernetes object names.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| dns_label(l, 63).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a lowercase DNS name of letters, digits, '-' and '.' (got {s:?})"
        ))
    }
}

/// A fully qualified host name such as `vidgen.example.com` (optionally `*.example.com`).
pub fn dns_name(s: &str, allow_wildcard: bool) -> Result<(), String> {
    let body = match s.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        _ => s,
    };
    let labels_ok = !body.is_empty()
        && body.len() <= 253
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if labels_ok {
        Ok(())
    } else {
        Err(format!(
            "must be a lowercase DNS name like app.example.com (got {s:?})"
        ))
    }
}

/// A container image reference: `[registry[:port]/]path[:tag][@sha256:digest]`, with Docker's
/// rule that the first component is a registry only when it has a `.` or `:` or is `localhost`.
pub fn image_ref(s: &str) -> Result<(), String> {
    static RES: std::sync::OnceLock<Option<(regex::Regex, regex::Regex)>> =
        std::sync::OnceLock::new();
    let bad = || {
        Err(format!(
            "must be an image reference like ghcr.io/acme/api:1.4.2 (lowercase repository, optional tag or @sha256 digest; got {s:?})"
        ))
    };
    let Some((registry_re, rest_re)) = RES.get_or_init(|| {
        let registry = regex::Regex::new(
            r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$",
        );
        let rest = regex::Regex::new(concat!(
            r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
            r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
        ));
        registry.ok().zip(rest.ok())
    }) else {
        return Ok(());
    };
    if s.is_empty() || s.len() > 512 {
        return bad();
    }
    let rest = match s.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            if !registry_re.is_match(first) {
                return bad();
            }
            rest
        }
        _ => s,
    };
    if rest_re.is_match(rest) {
        Ok(())
    } else {
        bad()
    }
}

fn quantity(s: &str) -> Result<(), String> {
    parse_quantity(s).map(drop)
}

fn positive_quantity(s: &str) -> Result<(), String> {
    let q = parse_quantity(s)?;
    if q.milli() == 0 {
        return Err(format!("must be greater than zero (got {s:?})"));
    }
    Ok(())
}

fn route_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("must start with / (got {p:?})"));
    }
    if p.contains('*') {
        let prefix = p.trim_end_matches('*').trim_end_matches('/');
        let prefix = if prefix.is_empty() { "/" } else { prefix };
        return Err(format!(
            "is a prefix, not a glob: write {prefix:?} instead of {p:?}"
        ));
    }
    if p.chars().any(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '{' | '}' | ';' | '"' | '\'' | '\\' | '$' | '#' | '?')
    }) {
        return Err(format!(
            "must be a plain URL path: no spaces, quotes, braces, ';', '$', '#', '?' or '\\' (got {p:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for ok in [
            "nginx",
            "postgres:16",
            "ghcr.io/acme/vidgen-api:1.4.2",
            "localhost:5000/team/app:latest",
            "qdrant/qdrant:v1.12.0",
            "berth-demo/api:latest",
            "ollama/ollama@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(image_ref(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "UPPER/case:tag",
            "image with space",
            "",
            "app:",
            ":tag",
            "a//b",
        ] {
            assert!(image_ref(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn dns_names() {
        assert!(dns_name("vidgen.example.com", false).is_ok());
        assert!(dns_name("Not_A_Domain", false).is_err());
        assert!(dns_name("*.example.com", false).is_err());
        assert!(dns_name("*.example.com", true).is_ok());
        assert!(dns_name("a b.com", false).is_err());
        assert!(dns_label("vidgen", 63).is_ok());
        assert!(dns_label("Vidgen_Prod", 63).is_err());
    }

    #[test]
    fn route_paths() {
        assert!(route_path("/api/generate").is_ok());
        assert!(route_path("api").is_err());
        assert!(route_path("/a b").is_err());
        assert!(route_path("/x;return 200").is_err());
    }
}
