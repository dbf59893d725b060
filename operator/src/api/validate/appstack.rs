//! AppStack: the stack's components, their names within the stack, its database and Redis.

use std::collections::HashMap;

use super::backup::{destination, retention};
use super::certificate::cert_issuer;
use super::values::{
    dns_label, dns_name, dns_subdomain, image_ref, positive_quantity, quantity, route_path,
};
use super::worker::{queue, scaling};
use super::{
    container, object_name, resources, Errors, FieldError, Path, Validate, MAX_LABEL,
    RESERVED_COMPONENT_NAMES,
};
use crate::api::appstack::{ApiSpec, AppStack, AppStackSpec, PostgresSpec, RedisSpec, StackBackup};
use crate::api::common::HealthCheck;
use crate::api::schedule::{parse_cron, parse_time_zone};

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
        let worker_redis = has_redis || w.queue.redis.is_some();
        container(errs, &w.container, &p, has_postgres, worker_redis);
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
        container(errs, &s.container, &p, has_postgres, has_redis);
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
    container(errs, &api.container, path, has_pg, has_redis);
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
