//! Deployments and StatefulSets from planned components: pod template, probes, security.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::plan::{Component, Dependency, Env, EnvValue, Health, HealthCheckKind, User};

use super::meta::{Owner, SPEC_HASH_ANNOTATION};

/// Name of the data volume (and of a StatefulSet's volumeClaimTemplate).
pub const DATA_VOLUME: &str = "data";

/// The Deployment of a component without storage.
pub fn deployment(owner: &Owner, c: &Component) -> Deployment {
    Deployment {
        metadata: workload_meta(owner, c),
        spec: Some(DeploymentSpec {
            replicas: Some(c.replicas),
            selector: selector(owner, c),
            // Never drop below the wanted replicas during a rollout: a new pod must be ready
            // (its readiness probe passes) before an old one goes.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: pod_template(owner, c),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The StatefulSet of a component with storage: its data volume is a volumeClaimTemplate.
pub fn stateful_set(owner: &Owner, c: &Component) -> StatefulSet {
    let claims = c.storage.as_ref().map(|s| {
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(DATA_VOLUME.into()),
                labels: Some(owner.component_labels(&c.name, c.kind.as_str())),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_string(), Quantity(s.size.clone()))].into()),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        }]
    });
    StatefulSet {
        metadata: workload_meta(owner, c),
        spec: Some(StatefulSetSpec {
            replicas: Some(c.replicas),
            selector: selector(owner, c),
            service_name: Some(c.host.clone()),
            template: pod_template(owner, c),
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

fn workload_meta(owner: &Owner, c: &Component) -> ObjectMeta {
    let mut meta = owner.meta(
        c.host.clone(),
        owner.component_labels(&c.name, c.kind.as_str()),
    );
    meta.annotations = Some([(SPEC_HASH_ANNOTATION.to_string(), c.spec_hash.clone())].into());
    meta
}

fn selector(owner: &Owner, c: &Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(owner.selector(&c.name)),
        match_expressions: None,
    }
}

fn pod_template(owner: &Owner, c: &Component) -> PodTemplateSpec {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (i, path) in c.scratch_paths.iter().enumerate() {
        let name = format!("scratch-{i}");
        volumes.push(Volume {
            name: name.clone(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: path.clone(),
            ..VolumeMount::default()
        });
    }
    if let Some(s) = &c.storage {
        mounts.push(VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: s.mount_path.clone(),
            ..VolumeMount::default()
        });
    }
    let container = Container {
        name: c.name.clone(),
        image: Some(c.image.clone()),
        command: non_empty(&c.command),
        args: non_empty(&c.args),
        env: non_empty_vec(c.env.iter().map(env_var).collect()),
        ports: c.port.as_ref().map(|p| {
            vec![ContainerPort {
                name: Some(p.name.clone()),
                container_port: p.number,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]
        }),
        readiness_probe: c.health.as_ref().map(|h| probe(h, h.failure_threshold)),
        liveness_probe: c.health.as_ref().map(|h| probe(h, h.failure_threshold)),
        startup_probe: c.health.as_ref().map(startup_probe),
        resources: c.resources.as_ref().map(resources),
        security_context: Some(container_security(c.user)),
        volume_mounts: non_empty_vec(mounts.clone()),
        ..Container::default()
    };
    let init: Vec<Container> = c
        .depends_on
        .iter()
        .map(|d| wait_container(d, &mounts))
        .collect();
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(owner.component_labels(&c.name, c.kind.as_str())),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            init_containers: non_empty_vec(init),
            volumes: non_empty_vec(volumes),
            security_context: Some(pod_security(c.user)),
            termination_grace_period_seconds: c.termination_grace_period_seconds,
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            ..PodSpec::default()
        }),
    }
}

/// An init container that blocks until a dependency accepts connections. The api therefore
/// never starts before its database and cache are up; the loop keeps the init container cheap
/// and its log says what it waits for.
pub fn wait_container(d: &Dependency, mounts: &[VolumeMount]) -> Container {
    let check = match d.check.as_slice() {
        [sh, c, script] if sh == "sh" && c == "-c" => script.clone(),
        other => other.join(" "),
    };
    let script = format!(
        "until {check}; do echo 'waiting for {name} to accept connections'; sleep 2; done",
        name = d.name
    );
    Container {
        name: format!("wait-for-{}", d.name),
        image: Some(d.image.clone()),
        command: Some(vec!["sh".into(), "-c".into(), script]),
        env: non_empty_vec(d.env.iter().map(env_var).collect()),
        security_context: Some(container_security(d.user)),
        // Only /tmp: the tools write nothing else.
        volume_mounts: non_empty_vec(
            mounts
                .iter()
                .filter(|m| m.mount_path == "/tmp")
                .cloned()
                .collect(),
        ),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_string(), Quantity("10m".into())),
                    ("memory".to_string(), Quantity("16Mi".into())),
                ]
                .into(),
            ),
            limits: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}

/// An env var; secret material only ever by reference.
pub fn env_var(e: &Env) -> EnvVar {
    match &e.value {
        EnvValue::Literal(v) => EnvVar {
            name: e.name.clone(),
            value: Some(v.clone()),
            value_from: None,
        },
        EnvValue::Secret(r) | EnvValue::Generated(r) => EnvVar {
            name: e.name.clone(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
    }
}

fn handler(h: &Health) -> Probe {
    match &h.check {
        HealthCheckKind::Http { path, port } => Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(*port),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        },
        HealthCheckKind::Tcp { port } => Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(*port),
                host: None,
            }),
            ..Probe::default()
        },
        HealthCheckKind::Exec { command } => Probe {
            exec: Some(ExecAction {
                command: Some(command.clone()),
            }),
            ..Probe::default()
        },
    }
}

fn probe(h: &Health, failure_threshold: i32) -> Probe {
    Probe {
        period_seconds: Some(h.interval_seconds),
        timeout_seconds: Some(h.timeout_seconds),
        failure_threshold: Some(failure_threshold),
        ..handler(h)
    }
}

/// The start period becomes the startup probe's extra attempts: liveness only starts counting
/// once the process answered once.
fn startup_probe(h: &Health) -> Probe {
    let interval = h.interval_seconds.max(1);
    let extra = (h.start_period_seconds + interval - 1) / interval;
    probe(h, h.failure_threshold + extra)
}

/// Memory is request and limit (no overcommit surprises); CPU is a request only (no throttling).
pub fn resources(r: &crate::api::common::Resources) -> ResourceRequirements {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &r.cpu {
        requests.insert("cpu".to_string(), Quantity(cpu.clone()));
    }
    if let Some(mem) = &r.memory {
        requests.insert("memory".to_string(), Quantity(mem.clone()));
        limits.insert("memory".to_string(), Quantity(mem.clone()));
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    }
}

fn pod_security(user: Option<User>) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: user.map(|u| u.uid),
        run_as_group: user.map(|u| u.gid),
        fs_group: user.map(|u| u.gid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

fn container_security(user: Option<User>) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: user.map(|u| u.uid),
        run_as_group: user.map(|u| u.gid),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

fn non_empty(v: &[String]) -> Option<Vec<String>> {
    (!v.is_empty()).then(|| v.to_vec())
}

fn non_empty_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}
