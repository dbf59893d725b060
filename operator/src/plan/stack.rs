//! Planning an AppStack: its components, secrets, exposure, network rules and children.

use crate::api::appstack::{ApiSpec, PostgresSpec, RedisSpec, ServiceSpec, StackBackup};
use crate::api::backup::{BackupDatabase, BackupDestination, VolumeDestination};
use crate::api::common::HealthCheck;
use crate::api::units::parse_quantity;
use crate::api::{AppStack, AppStackSpec, BackupSpec, CertificateSpec};

use super::component::{env_with_urls, spec_hash, Observed};
use super::exposure::exposure;
use super::names::{self, keys};
use super::types::*;
use super::wiring::{self, StackUrls, POSTGRES_PORT, REDIS_PORT};
use super::worker::stack_worker_spec;
use super::PlanError;

/// Default size of the PostgreSQL data volume.
pub const DEFAULT_POSTGRES_STORAGE: &str = "10Gi";
/// Default size of a stack backup volume.
pub const DEFAULT_BACKUP_VOLUME: &str = "10Gi";
/// Where PostgreSQL keeps its data (the image's default), and PGDATA one level below so the
/// volume's own root (with `lost+found` on some filesystems) is not the cluster directory.
pub const POSTGRES_MOUNT: &str = "/var/lib/postgresql/data";
pub const POSTGRES_PGDATA: &str = "/var/lib/postgresql/data/pgdata";
/// Where Redis writes its append-only file when it has storage.
pub const REDIS_MOUNT: &str = "/data";
/// Default mount path of a service's storage.
pub const DEFAULT_SERVICE_MOUNT: &str = "/data";

/// Plans one AppStack.
pub fn plan_stack(stack: &AppStack, observed: &Observed) -> Result<StackPlan, PlanError> {
    let name = stack
        .metadata
        .name
        .clone()
        .ok_or(PlanError::MissingName { kind: "AppStack" })?;
    // The semantic rules `berth validate` applies (what no CRD rule can check), so a stack the
    // apiserver accepted but berth cannot carry out is refused here, on both backends.
    if let Some(e) = PlanError::from_field_errors(crate::api::validate::Validate::validate(stack)) {
        return Err(e);
    }
    plan_spec(&name, &stack.spec, observed)
}

/// Plans a stack spec under a name.
pub fn plan_spec(
    stack: &str,
    spec: &AppStackSpec,
    observed: &Observed,
) -> Result<StackPlan, PlanError> {
    let urls = wiring::stack_urls(stack, spec);
    let mut components = vec![api(stack, &spec.api, &urls)];
    if let Some(pg) = spec.postgres.as_ref().filter(|p| p.external.is_none()) {
        components.push(postgres(stack, pg)?);
    }
    if let Some(r) = spec.redis.as_ref().filter(|r| r.external.is_none()) {
        components.push(redis(stack, r)?);
    }
    let mut services: Vec<&ServiceSpec> = spec.services.iter().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    for s in services {
        components.push(service(stack, s, &urls));
    }
    for c in &mut components {
        c.spec_hash = spec_hash(c);
    }
    let exposure = exposure(stack, spec, observed)?;
    let url = exposure.as_ref().map(|e| {
        let scheme = if e.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", e.domain)
    });
    let children = children(stack, spec)?;
    Ok(StackPlan {
        stack: stack.to_string(),
        network: network_rules(&components, children.backup.is_some()),
        secrets: wiring::generated_secrets(stack, spec),
        children,
        exposure,
        url,
        components,
    })
}

fn http_health(h: &HealthCheck, default_port: i32) -> Health {
    Health {
        check: HealthCheckKind::Http {
            path: h.path.clone(),
            port: h.port.unwrap_or(default_port),
        },
        interval_seconds: h.interval_seconds,
        timeout_seconds: h.timeout_seconds,
        failure_threshold: h.failure_threshold,
        start_period_seconds: h.start_period_seconds,
    }
}

/// Without a health check, a component is healthy when its port accepts connections.
fn tcp_health(port: i32) -> Health {
    Health {
        check: HealthCheckKind::Tcp { port },
        interval_seconds: 10,
        timeout_seconds: 5,
        failure_threshold: 3,
        start_period_seconds: 0,
    }
}

fn api(stack: &str, api: &ApiSpec, urls: &StackUrls) -> Component {
    Component {
        name: "api".into(),
        kind: ComponentKind::Api,
        host: names::component_host(stack, "api"),
        image: api.image.clone(),
        command: api.command.clone(),
        args: api.args.clone(),
        env: env_with_urls(&api.env, urls),
        port: Some(Port {
            name: "http".into(),
            number: api.port,
        }),
        health: Some(match &api.health_check {
            Some(h) => http_health(h, api.port),
            None => tcp_health(api.port),
        }),
        replicas: api.replicas,
        storage: None,
        resources: api.resources.clone(),
        user: None,
        scratch_paths: vec!["/tmp".into()],
        depends_on: wiring::dependencies(urls),
        termination_grace_period_seconds: None,
        spec_hash: String::new(),
    }
}

fn generated(secret: String, key: &str) -> EnvValue {
    EnvValue::Generated(crate::api::common::SecretKeyRef {
        name: secret,
        key: key.into(),
    })
}

fn literal(name: &str, value: &str) -> Env {
    Env {
        name: name.into(),
        value: EnvValue::Literal(value.into()),
    }
}

fn checked_quantity(field: &str, value: &str) -> Result<u128, PlanError> {
    parse_quantity(value)
        .map(|q| q.whole_units())
        .map_err(|message| PlanError::Invalid {
            field: field.into(),
            message,
        })
}

fn postgres(stack: &str, pg: &PostgresSpec) -> Result<Component, PlanError> {
    let secret = names::postgres_secret(stack);
    let size = pg
        .storage
        .clone()
        .unwrap_or_else(|| DEFAULT_POSTGRES_STORAGE.into());
    checked_quantity("spec.postgres.storage", &size)?;
    Ok(Component {
        name: "postgres".into(),
        kind: ComponentKind::Postgres,
        host: names::component_host(stack, "postgres"),
        image: wiring::postgres_image(pg),
        command: vec![],
        args: vec![],
        // The official image's conventions; the password only ever travels by reference.
        env: vec![
            Env {
                name: "POSTGRES_USER".into(),
                value: generated(secret.clone(), keys::USERNAME),
            },
            Env {
                name: "POSTGRES_PASSWORD".into(),
                value: generated(secret.clone(), keys::PASSWORD),
            },
            Env {
                name: "POSTGRES_DB".into(),
                value: generated(secret, keys::DATABASE),
            },
            literal("PGDATA", POSTGRES_PGDATA),
        ],
        port: Some(Port {
            name: "postgres".into(),
            number: POSTGRES_PORT,
        }),
        health: Some(Health {
            check: HealthCheckKind::Exec {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    r#"pg_isready -q -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB""#.into(),
                ],
            },
            interval_seconds: 10,
            timeout_seconds: 5,
            failure_threshold: 6,
            // initdb on first start takes a while on slow disks.
            start_period_seconds: 30,
        }),
        replicas: 1,
        storage: Some(Storage {
            size,
            mount_path: POSTGRES_MOUNT.into(),
        }),
        resources: pg.resources.clone(),
        user: Some(OFFICIAL_IMAGE_USER),
        scratch_paths: vec!["/tmp".into(), "/var/run/postgresql".into()],
        depends_on: vec![],
        termination_grace_period_seconds: Some(60),
        spec_hash: String::new(),
    })
}

/// The redis-server configuration, fed on stdin so the password is not in the process list.
/// `noeviction`: a full cache refuses writes instead of silently dropping queued jobs.
pub fn redis_script(max_memory_bytes: Option<u128>, persistent: bool) -> String {
    let mut conf = vec!["requirepass $REDIS_PASSWORD".to_string()];
    if let Some(bytes) = max_memory_bytes {
        conf.push(format!("maxmemory {bytes}"));
    }
    conf.push("maxmemory-policy noeviction".into());
    if persistent {
        conf.push(format!("dir {REDIS_MOUNT}"));
        conf.push("appendonly yes".into());
    } else {
        // No volume: snapshots would fail on the read-only filesystem and then block writes.
        conf.push("save \"\"".into());
        conf.push("appendonly no".into());
    }
    format!("exec redis-server - <<EOF\n{}\nEOF\n", conf.join("\n"))
}

fn redis(stack: &str, r: &RedisSpec) -> Result<Component, PlanError> {
    let max_memory = r
        .max_memory
        .as_deref()
        .map(|m| checked_quantity("spec.redis.maxMemory", m))
        .transpose()?;
    if let Some(s) = &r.storage {
        checked_quantity("spec.redis.storage", s)?;
    }
    let secret = names::redis_secret(stack);
    Ok(Component {
        name: "redis".into(),
        kind: ComponentKind::Redis,
        host: names::component_host(stack, "redis"),
        image: wiring::redis_image(r),
        command: vec![
            "sh".into(),
            "-c".into(),
            redis_script(max_memory, r.storage.is_some()),
        ],
        args: vec![],
        env: vec![
            Env {
                name: "REDIS_PASSWORD".into(),
                value: generated(secret.clone(), keys::PASSWORD),
            },
            // redis-cli reads the password from here: the health check needs no argument.
            Env {
                name: "REDISCLI_AUTH".into(),
                value: generated(secret, keys::PASSWORD),
            },
        ],
        port: Some(Port {
            name: "redis".into(),
            number: REDIS_PORT,
        }),
        health: Some(Health {
            check: HealthCheckKind::Exec {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "redis-cli -h 127.0.0.1 ping | grep -q PONG".into(),
                ],
            },
            interval_seconds: 10,
            timeout_seconds: 5,
            failure_threshold: 3,
            start_period_seconds: 5,
        }),
        replicas: 1,
        storage: r.storage.as_ref().map(|size| Storage {
            size: size.clone(),
            mount_path: REDIS_MOUNT.into(),
        }),
        resources: r.resources.clone(),
        user: Some(OFFICIAL_IMAGE_USER),
        scratch_paths: vec!["/tmp".into()],
        depends_on: vec![],
        termination_grace_period_seconds: None,
        spec_hash: String::new(),
    })
}

fn service(stack: &str, s: &ServiceSpec, urls: &StackUrls) -> Component {
    Component {
        name: s.name.clone(),
        kind: ComponentKind::Service,
        host: names::component_host(stack, &s.name),
        image: s.image.clone(),
        command: s.command.clone(),
        args: s.args.clone(),
        env: env_with_urls(&s.env, urls),
        port: Some(Port {
            name: "service".into(),
            number: s.port,
        }),
        health: Some(match &s.health_check {
            Some(h) => http_health(h, s.port),
            None => tcp_health(s.port),
        }),
        replicas: 1,
        storage: s.storage.as_ref().map(|size| Storage {
            size: size.clone(),
            mount_path: s
                .mount_path
                .clone()
                .unwrap_or_else(|| DEFAULT_SERVICE_MOUNT.into()),
        }),
        resources: s.resources.clone(),
        user: None,
        scratch_paths: vec!["/tmp".into()],
        depends_on: vec![],
        termination_grace_period_seconds: None,
        spec_hash: String::new(),
    }
}

/// Deny by default; the proxy reaches the api; api, workers and services reach the database,
/// the cache and the services; the stack's backup jobs reach the database (and only it) when
/// the stack has a backup; nothing reaches the workers.
pub fn network_rules(components: &[Component], has_backup: bool) -> Vec<NetworkRule> {
    let insiders: Vec<Peer> = super::network::CLIENTS.map(Peer::Kind).to_vec();
    components
        .iter()
        .filter_map(|c| {
            let port = c.port.as_ref()?.number;
            let from = match c.kind {
                ComponentKind::Api => vec![Peer::Proxy],
                ComponentKind::Postgres if has_backup => {
                    let mut from = insiders.clone();
                    from.push(Peer::Backup);
                    from
                }
                ComponentKind::Postgres | ComponentKind::Redis | ComponentKind::Service => {
                    insiders.clone()
                }
                ComponentKind::Worker => return None,
            };
            Some(NetworkRule {
                to: c.name.clone(),
                port,
                from,
            })
        })
        .collect()
}

fn children(stack: &str, spec: &AppStackSpec) -> Result<Children, PlanError> {
    let workers = spec
        .workers
        .iter()
        .map(|w| {
            (
                names::child_worker(stack, &w.name),
                stack_worker_spec(stack, w),
            )
        })
        .collect();
    let certificate = match (
        &spec.domain,
        spec.tls.as_ref().and_then(|t| t.issuer.as_ref()),
    ) {
        (Some(domain), Some(issuer)) => {
            let name = names::child_certificate(stack);
            // Through serde so the Certificate gets the API's own defaults.
            let cert: CertificateSpec = serde_json::from_value(serde_json::json!({
                "secretName": name,
                "dnsNames": [domain],
                "issuer": issuer,
            }))
            .map_err(|e| PlanError::Internal(format!("certificate spec: {e}")))?;
            Some((name, cert))
        }
        _ => None,
    };
    let backup = spec
        .backup
        .as_ref()
        .map(|b| (names::child_backup(stack), backup_spec(stack, b)));
    Ok(Children {
        workers,
        certificate,
        backup,
    })
}

fn backup_spec(stack: &str, b: &StackBackup) -> BackupSpec {
    BackupSpec {
        schedule: b.schedule.clone(),
        time_zone: b.time_zone.clone(),
        suspend: b.suspend,
        database: BackupDatabase {
            app_stack_ref: Some(stack.to_string()),
            url_secret_ref: None,
        },
        destination: b.destination.clone().unwrap_or(BackupDestination {
            volume: Some(VolumeDestination {
                size: DEFAULT_BACKUP_VOLUME.into(),
                storage_class_name: None,
            }),
            s3: None,
        }),
        format: b.format,
        compression: b.compression,
        retention: b.retention.clone(),
        verify: b.verify,
        postgres_version: None,
        image: None,
    }
}
