//! The container of one replica: create body, labels, health check and resources, from the
//! plan's component and the group's resolved environment and networks.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, Mount, MountType,
    NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};

use crate::api::units::parse_quantity;
use crate::plan::{Component, HealthCheckKind};

use super::super::labels;
use super::{DesiredGroup, SCRATCH_TMPFS};

/// The Docker health check for a plan health check: only `exec` checks run inside the
/// container; HTTP and TCP checks are berth's own ([`super::probe`]), and the image's own
/// HEALTHCHECK is switched off for them so that only berth's verdict gates a rollout.
pub fn health_config(c: &Component) -> Option<HealthConfig> {
    let h = c.health.as_ref()?;
    let test = match &h.check {
        HealthCheckKind::Http { .. } | HealthCheckKind::Tcp { .. } => {
            return Some(HealthConfig {
                test: Some(vec!["NONE".to_string()]),
                ..Default::default()
            })
        }
        HealthCheckKind::Exec { command } => {
            let mut t = vec!["CMD".to_string()];
            t.extend(command.iter().cloned());
            t
        }
    };
    let ns = |s: i32| i64::from(s.max(0)) * 1_000_000_000;
    Some(HealthConfig {
        test: Some(test),
        interval: Some(ns(h.interval_seconds.max(1))),
        timeout: Some(ns(h.timeout_seconds.max(1))),
        retries: Some(i64::from(h.failure_threshold.max(1))),
        start_period: Some(ns(h.start_period_seconds)),
        start_interval: None,
    })
}

/// The labels of replica `replica` of a group.
pub fn container_labels(g: &DesiredGroup, instance: &str, replica: u32) -> HashMap<String, String> {
    HashMap::from([
        (labels::INSTANCE.to_string(), instance.to_string()),
        (labels::OBJECT.to_string(), g.object.label()),
        (labels::STACK.to_string(), g.stack.clone()),
        (labels::COMPONENT.to_string(), g.component.name.clone()),
        (
            labels::KIND.to_string(),
            g.component.kind.as_str().to_string(),
        ),
        (labels::REPLICA.to_string(), replica.to_string()),
        (labels::SPEC_HASH.to_string(), g.component.spec_hash.clone()),
        (labels::GROUP.to_string(), g.name().to_string()),
    ])
}

/// The container to create for replica `replica` of a group, hardened as the plan's pods are on
/// Kubernetes: the plan's user when it names one (PostgreSQL and Redis run as their images'
/// unprivileged user; a fresh volume takes the ownership of the image's directory), a
/// read-only root filesystem with the plan's scratch paths as tmpfs, no new privileges, and
/// every capability dropped.
pub fn container_body(g: &DesiredGroup, instance: &str, replica: u32) -> ContainerCreateBody {
    let c = &g.component;
    let mut env = g.env.clone();
    env.push(format!("BERTH_REPLICA={}", g.container_name(replica)));
    let (memory, cpu_shares) = resources(c);
    let mut endpoints = HashMap::new();
    // Only the first network at creation (API 1.41 takes one); the engine connects the rest.
    if let Some((net, aliases)) = g.networks.first() {
        endpoints.insert(
            net.clone(),
            EndpointSettings {
                aliases: (!aliases.is_empty()).then(|| aliases.clone()),
                ..Default::default()
            },
        );
    }
    ContainerCreateBody {
        image: Some(c.image.clone()),
        entrypoint: (!c.command.is_empty()).then(|| c.command.clone()),
        cmd: (!c.args.is_empty()).then(|| c.args.clone()),
        env: Some(env),
        labels: Some(container_labels(g, instance, replica)),
        healthcheck: health_config(c),
        hostname: Some(g.container_name(replica)),
        user: c.user.map(|u| format!("{}:{}", u.uid, u.gid)),
        stop_timeout: Some(g.stop_timeout()),
        host_config: Some(HostConfig {
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            mounts: g.volume.as_ref().map(|(v, path)| {
                vec![Mount {
                    target: Some(path.clone()),
                    source: Some(v.clone()),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                }]
            }),
            memory,
            cpu_shares,
            init: Some(false),
            readonly_rootfs: Some(true),
            tmpfs: (!c.scratch_paths.is_empty()).then(|| {
                c.scratch_paths
                    .iter()
                    .map(|p| (p.clone(), SCRATCH_TMPFS.to_string()))
                    .collect()
            }),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(endpoints),
        }),
        ..Default::default()
    }
}

/// Memory limit in bytes; CPU as a relative weight (the plan's CPU is a request, not a cap).
fn resources(c: &Component) -> (Option<i64>, Option<i64>) {
    let Some(r) = &c.resources else {
        return (None, None);
    };
    let memory = r
        .memory
        .as_deref()
        .and_then(|m| parse_quantity(m).ok())
        .and_then(|q| i64::try_from(q.whole_units()).ok());
    let cpu = r
        .cpu
        .as_deref()
        .and_then(|m| parse_quantity(m).ok())
        .and_then(|q| i64::try_from(q.milli() * 1024 / 1000).ok())
        .map(|s| s.max(2));
    (memory, cpu)
}
