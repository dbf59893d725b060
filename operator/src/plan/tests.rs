//! Whole-stack planning tests: one fixture per shape of stack, every decision checked.

use serde_json::json;

use super::*;
use crate::api::common::SecretKeyRef;
use crate::api::AppStack;

/// The AppStack of API.md, as users write it.
pub(crate) fn vidgen() -> AppStack {
    stack(
        "vidgen",
        json!({
            "domain": "vidgen.example.com",
            "tls": {"issuer": {"acme": {"email": "ops@example.com"}}},
            "api": {
                "image": "ghcr.io/acme/vidgen-api:1.4.2", "replicas": 2, "port": 3000,
                "env": [{"name": "LOG_LEVEL", "value": "info"},
                        {"name": "VEO_API_KEY", "secretKeyRef": {"name": "vidgen-keys", "key": "veo"}}],
                "healthCheck": {"path": "/health", "intervalSeconds": 10, "timeoutSeconds": 5,
                                "failureThreshold": 3, "startPeriodSeconds": 10},
                "resources": {"cpu": "500m", "memory": "512Mi"},
                "routes": [
                    {"path": "/api/generate", "rateLimit": {"requestsPerSecond": 2, "burst": 5}},
                    {"path": "/api", "rateLimit": {"requestsPerSecond": 10, "burst": 20}},
                    {"path": "/ws", "websocket": true}
                ],
                "maxBodySize": "500Mi"
            },
            "workers": [{
                "name": "render", "image": "ghcr.io/acme/vidgen-api:1.4.2",
                "command": ["node", "dist/worker.js"],
                "queue": {"type": "bullmq", "name": "video-generation"},
                "scaling": {"minReplicas": 1, "maxReplicas": 10, "jobsPerReplica": 5}
            }],
            "postgres": {"version": "16", "database": "vidgen", "storage": "10Gi"},
            "redis": {"version": "7", "maxMemory": "256Mi"},
            "services": [{"name": "qdrant", "image": "qdrant/qdrant:v1.12.0", "port": 6333,
                          "storage": "5Gi", "healthCheck": {"path": "/healthz"}}],
            "backup": {"schedule": "0 2 * * *", "retention": {"keepLast": 30}, "verify": true}
        }),
    )
}

/// A minimal stack: an api and nothing else.
pub(crate) fn minimal() -> AppStack {
    stack("tiny", json!({"api": {"image": "tiny:1"}}))
}

/// A stack on managed servers.
pub(crate) fn external() -> AppStack {
    stack(
        "ext",
        json!({
            "api": {"image": "ext:1"},
            "postgres": {"external": {"urlSecretRef": {"name": "db", "key": "url"}}},
            "redis": {"external": {"urlSecretRef": {"name": "cache", "key": "url"}}}
        }),
    )
}

pub(crate) fn stack(name: &str, spec: serde_json::Value) -> AppStack {
    serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
        "metadata": {"name": name, "namespace": "prod"}, "spec": spec
    }))
    .expect("fixture is a valid AppStack")
}

fn plan(s: &AppStack) -> StackPlan {
    plan_stack(s, &Observed::default()).expect("plans")
}

fn env<'a>(c: &'a Component, name: &str) -> Option<&'a EnvValue> {
    c.env.iter().find(|e| e.name == name).map(|e| &e.value)
}

fn generated(name: &str, key: &str) -> EnvValue {
    EnvValue::Generated(SecretKeyRef {
        name: name.into(),
        key: key.into(),
    })
}

#[test]
fn components_in_stable_order() {
    let cases: [(AppStack, &[&str]); 3] = [
        (vidgen(), &["api", "postgres", "redis", "qdrant"]),
        (minimal(), &["api"]),
        (external(), &["api"]),
    ];
    for (s, want) in cases {
        let names: Vec<_> = plan(&s).components.into_iter().map(|c| c.name).collect();
        assert_eq!(names, want);
    }
}

#[test]
fn images_of_in_stack_servers() {
    let cases = [
        (
            json!({"version": "16"}),
            json!({"version": "7"}),
            "postgres:16",
            "redis:7",
        ),
        (json!({}), json!({}), "postgres:16", "redis:7"),
        (
            json!({"image": "reg.local/pg:15.4"}),
            json!({"version": "6.2"}),
            "reg.local/pg:15.4",
            "redis:6.2",
        ),
    ];
    for (pg, redis, pg_image, redis_image) in cases {
        let p = plan(&stack(
            "s",
            json!({"api": {"image": "a:1"}, "postgres": pg, "redis": redis}),
        ));
        assert_eq!(p.component("postgres").unwrap().image, pg_image);
        assert_eq!(p.component("redis").unwrap().image, redis_image);
    }
}

#[test]
fn api_gets_urls_by_reference_and_waits_for_both() {
    let cases = [
        (
            vidgen(),
            Some(generated("vidgen-postgres-credentials", "url")),
            Some(generated("vidgen-redis-credentials", "url")),
        ),
        (
            external(),
            Some(EnvValue::Secret(SecretKeyRef {
                name: "db".into(),
                key: "url".into(),
            })),
            Some(EnvValue::Secret(SecretKeyRef {
                name: "cache".into(),
                key: "url".into(),
            })),
        ),
        (minimal(), None, None),
    ];
    for (s, db, redis) in cases {
        let p = plan(&s);
        let api = p.component("api").unwrap();
        assert_eq!(env(api, "DATABASE_URL"), db.as_ref());
        assert_eq!(env(api, "REDIS_URL"), redis.as_ref());
        let deps: Vec<_> = api.depends_on.iter().map(|d| d.name.as_str()).collect();
        let want: Vec<&str> = [db.map(|_| "postgres"), redis.map(|_| "redis")]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(deps, want);
    }
}

#[test]
fn user_env_keeps_order_and_kind() {
    let p = plan(&vidgen());
    let api = p.component("api").unwrap();
    assert_eq!(
        env(api, "LOG_LEVEL"),
        Some(&EnvValue::Literal("info".into()))
    );
    assert_eq!(
        env(api, "VEO_API_KEY"),
        Some(&EnvValue::Secret(SecretKeyRef {
            name: "vidgen-keys".into(),
            key: "veo".into()
        }))
    );
    let names: Vec<_> = api.env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["LOG_LEVEL", "VEO_API_KEY", "DATABASE_URL", "REDIS_URL"]
    );
}

#[test]
fn health_checks() {
    let p = plan(&vidgen());
    let kinds: Vec<_> = p
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.health.as_ref().unwrap().check.clone()))
        .collect();
    assert_eq!(
        kinds[0],
        (
            "api",
            HealthCheckKind::Http {
                path: "/health".into(),
                port: 3000
            }
        )
    );
    match &kinds[1].1 {
        HealthCheckKind::Exec { command } => assert!(command[2].starts_with("pg_isready")),
        other => panic!("postgres: {other:?}"),
    }
    match &kinds[2].1 {
        HealthCheckKind::Exec { command } => {
            assert!(command[2].contains("redis-cli") && command[2].contains("PONG"))
        }
        other => panic!("redis: {other:?}"),
    }
    assert_eq!(
        kinds[3].1,
        HealthCheckKind::Http {
            path: "/healthz".into(),
            port: 6333
        }
    );
    let api = plan(&minimal()).components[0].health.clone().unwrap();
    assert_eq!(api.check, HealthCheckKind::Tcp { port: 8080 });
}

#[test]
fn storage_and_replicas() {
    let p = plan(&vidgen());
    let got: Vec<_> = p
        .components
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.replicas,
                c.storage
                    .as_ref()
                    .map(|s| (s.size.as_str(), s.mount_path.as_str())),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("api", 2, None),
            ("postgres", 1, Some(("10Gi", "/var/lib/postgresql/data"))),
            ("redis", 1, None),
            ("qdrant", 1, Some(("5Gi", "/data"))),
        ]
    );
    let pg = stack("s", json!({"api": {"image": "a:1"}, "postgres": {}}));
    assert_eq!(
        plan(&pg)
            .component("postgres")
            .unwrap()
            .storage
            .as_ref()
            .unwrap()
            .size,
        "10Gi"
    );
}

#[test]
fn postgres_follows_the_official_image() {
    let p = plan(&vidgen());
    let pg = p.component("postgres").unwrap();
    assert_eq!(
        env(pg, "POSTGRES_PASSWORD"),
        Some(&generated("vidgen-postgres-credentials", "password"))
    );
    assert_eq!(
        env(pg, "POSTGRES_USER"),
        Some(&generated("vidgen-postgres-credentials", "username"))
    );
    assert_eq!(
        env(pg, "PGDATA"),
        Some(&EnvValue::Literal("/var/lib/postgresql/data/pgdata".into()))
    );
    assert_eq!(pg.user, Some(User { uid: 999, gid: 999 }));
    assert_eq!(pg.host, "vidgen-postgres");
}

#[test]
fn redis_config() {
    let cases = [
        (
            json!({"maxMemory": "256Mi"}),
            vec![
                "maxmemory 268435456",
                "maxmemory-policy noeviction",
                "save \"\"",
            ],
        ),
        (
            json!({"storage": "1Gi"}),
            vec!["maxmemory-policy noeviction", "appendonly yes", "dir /data"],
        ),
    ];
    for (redis, wanted) in cases {
        let p = plan(&stack(
            "s",
            json!({"api": {"image": "a:1"}, "redis": redis}),
        ));
        let r = p.component("redis").unwrap();
        let script = &r.command[2];
        assert!(script.starts_with("exec redis-server - <<EOF\nrequirepass $REDIS_PASSWORD\n"));
        for w in wanted {
            assert!(script.contains(w), "{script} lacks {w}");
        }
        assert_eq!(
            env(r, "REDIS_PASSWORD"),
            Some(&generated("s-redis-credentials", "password"))
        );
    }
}

#[test]
fn no_secret_value_in_a_plan() {
    for s in [vidgen(), minimal(), external()] {
        let p = plan(&s);
        for c in &p.components {
            for e in &c.env {
                if e.name.contains("PASSWORD") || e.name.ends_with("_URL") {
                    assert!(
                        !matches!(e.value, EnvValue::Literal(_)),
                        "{}: {} is literal",
                        c.name,
                        e.name
                    );
                }
            }
        }
        let text = serde_json::to_string(&p).unwrap();
        assert!(!text.contains("postgres://berth:"), "{text}");
    }
}

#[test]
fn generated_secrets_for_in_stack_servers_only() {
    let cases: [(AppStack, &[&str]); 3] = [
        (
            vidgen(),
            &["vidgen-postgres-credentials", "vidgen-redis-credentials"],
        ),
        (external(), &[]),
        (minimal(), &[]),
    ];
    for (s, want) in cases {
        let names: Vec<_> = plan(&s).secrets.into_iter().map(|s| s.name).collect();
        assert_eq!(names, want);
    }
    let p = plan(&vidgen());
    let keys: Vec<_> = p.secrets[0]
        .entries
        .iter()
        .map(|e| e.key.as_str())
        .collect();
    assert_eq!(keys, ["username", "password", "database", "url"]);
    assert_eq!(
        p.secrets[0].entries[1].value,
        SecretValue::Random { bytes: 32 }
    );
}

#[test]
fn network_rules() {
    let p = plan(&vidgen());
    let insiders = vec![
        Peer::Kind(ComponentKind::Api),
        Peer::Kind(ComponentKind::Worker),
        Peer::Kind(ComponentKind::Service),
    ];
    let got: Vec<_> = p
        .network
        .iter()
        .map(|r| (r.to.as_str(), r.port, r.from.clone()))
        .collect();
    let mut with_backup = insiders.clone();
    with_backup.push(Peer::Backup);
    assert_eq!(
        got,
        vec![
            ("api", 3000, vec![Peer::Proxy]),
            // vidgen has nightly backups: their pods reach the database, and only it.
            ("postgres", 5432, with_backup),
            ("redis", 6379, insiders.clone()),
            ("qdrant", 6333, insiders),
        ]
    );
    // The proxy reaches the api and nothing else; backups reach only the database.
    for r in &p.network {
        assert_eq!(r.from.contains(&Peer::Proxy), r.to == "api", "{r:?}");
        assert_eq!(r.from.contains(&Peer::Backup), r.to == "postgres", "{r:?}");
    }
    // Without a backup, nothing but api, workers and services reaches the database.
    let mut stack = vidgen();
    stack.spec.backup = None;
    let p = plan(&stack);
    assert!(p.network.iter().all(|r| !r.from.contains(&Peer::Backup)));
}

#[test]
fn exposure_and_url() {
    let p = plan(&vidgen());
    assert_eq!(p.url.as_deref(), Some("https://vidgen.example.com"));
    let e = p.exposure.unwrap();
    assert_eq!(e.max_body_bytes, 500 * 1024 * 1024);
    assert_eq!(e.target_port, 3000);
    let paths: Vec<_> = e.routes.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/api/generate", "/api", "/ws"]);
    let plain = stack(
        "p",
        json!({"domain": "p.example.com", "api": {"image": "a:1"}}),
    );
    assert_eq!(plan(&plain).url.as_deref(), Some("http://p.example.com"));
    assert_eq!(plan(&minimal()).url, None);
}

#[test]
fn children() {
    let p = plan(&vidgen());
    let (name, w) = &p.children.workers[0];
    assert_eq!(name, "vidgen-render");
    assert_eq!(w.app_stack_ref.as_deref(), Some("vidgen"));
    assert_eq!(w.queue.name, "video-generation");
    assert_eq!(w.command, ["node", "dist/worker.js"]);
    let (cert_name, cert) = p.children.certificate.as_ref().unwrap();
    assert_eq!(cert_name, "vidgen-tls");
    assert_eq!(cert.secret_name, "vidgen-tls");
    assert_eq!(cert.dns_names, ["vidgen.example.com"]);
    assert_eq!(
        cert.issuer.acme.as_ref().unwrap().server,
        crate::api::certificate::LETS_ENCRYPT
    );
    let (backup_name, b) = p.children.backup.as_ref().unwrap();
    assert_eq!(backup_name, "vidgen");
    assert_eq!(b.database.app_stack_ref.as_deref(), Some("vidgen"));
    assert_eq!(
        b.destination.volume.as_ref().map(|v| v.size.as_str()),
        Some("10Gi")
    );
    assert_eq!(b.retention.keep_last, Some(30));
    assert!(b.verify);
    assert_eq!(plan(&minimal()).children, Children::default());
}

#[test]
fn certificate_ref_needs_the_certificate() {
    let s = stack(
        "s",
        json!({"domain": "s.example.com", "tls": {"certificateRef": "wild"}, "api": {"image": "a:1"}}),
    );
    let err = plan_stack(&s, &Observed::default()).unwrap_err();
    assert_eq!(err.reason(), "CertificateNotFound");
    assert!(err.to_string().contains("\"wild\""));
    let observed = Observed {
        certificate_secrets: [("wild".to_string(), "wild-secret".to_string())].into(),
    };
    let p = plan_stack(&s, &observed).unwrap();
    assert_eq!(p.exposure.unwrap().tls.unwrap().secret_name, "wild-secret");
    assert!(p.children.certificate.is_none());
}

#[test]
fn spec_hash_is_stable_and_changes_with_the_spec() {
    let a = plan(&vidgen());
    let b = plan(&vidgen());
    assert_eq!(a, b);
    for c in &a.components {
        assert_eq!(c.spec_hash.len(), 16);
        assert_eq!(c.spec_hash, spec_hash(c));
    }
    let mut changed = vidgen();
    changed.spec.api.image = "ghcr.io/acme/vidgen-api:1.5.0".into();
    let c = plan(&changed);
    assert_ne!(a.components[0].spec_hash, c.components[0].spec_hash);
    // Only the api changed.
    for i in 1..a.components.len() {
        assert_eq!(a.components[i].spec_hash, c.components[i].spec_hash);
    }
}

#[test]
fn every_example_plans() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let docs = match crate::manifest::load_paths(&[examples]) {
        Ok(d) => d,
        // No examples yet (they land separately): nothing to check.
        Err(crate::manifest::LoadError::NotFound { .. })
        | Err(crate::manifest::LoadError::EmptyDir { .. }) => return,
        Err(e) => panic!("{e}"),
    };
    let set = crate::plan::set::ManifestSet::from_documents(&docs);
    for stack in &set.stacks {
        let p = plan_stack(stack, &set.observed_for(stack))
            .unwrap_or_else(|e| panic!("{:?}: {e}", stack.metadata.name));
        assert!(!p.components.is_empty());
    }
    for w in &set.workers {
        let s = w.spec.app_stack_ref.as_ref().and_then(|r| set.stack(r));
        plan_worker(w, s).unwrap_or_else(|e| panic!("{:?}: {e}", w.metadata.name));
    }
}
