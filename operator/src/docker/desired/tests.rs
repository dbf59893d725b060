use std::path::Path;

use super::*;
use crate::manifest::parse_documents;
use bollard::models::RestartPolicyNameEnum;

struct FakeSecrets;

impl SecretSource for FakeSecrets {
    fn generated(&mut self, secret: &GeneratedSecret) -> Result<SecretData, String> {
        crate::plan::wiring::materialize(secret, &SecretData::new(), |n| "p".repeat(n))
            .map_err(|e| e.to_string())
    }
}

const DEMO: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: AppStack
metadata: {name: shop}
spec:
  domain: shop.localhost
  api:
    image: berth-demo/api:latest
    port: 8080
    replicas: 2
    healthCheck: {path: /health}
    env: [{name: KEY, secretKeyRef: {name: keys, key: k}}]
  workers:
    - name: render
      image: berth-demo/worker:latest
      queue: {type: list, name: jobs}
      scaling: {minReplicas: 1, maxReplicas: 3}
  postgres: {image: berth-demo/postgres:latest}
  redis: {image: berth-demo/redis:latest}
---
apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData: {k: s3cret}
"#;

fn host(text: &str) -> DesiredHost {
    desired_host(
        &parse_documents(Path::new("t.yaml"), text),
        &mut FakeSecrets,
    )
}

#[test]
fn a_stack_and_its_worker() {
    let h = host(DEMO);
    assert!(h.errors.is_empty(), "{:?}", h.errors);
    let names: Vec<_> = h.groups().map(|g| g.name().to_string()).collect();
    assert_eq!(
        names,
        ["shop-api", "shop-postgres", "shop-redis", "shop-render"]
    );
    let api = h.groups().next().unwrap();
    assert_eq!(api.container_name(1), "shop-api-1");
    assert_eq!(api.replicas, 2);
    assert_eq!(api.waits_for, ["shop-postgres", "shop-redis"]);
    assert!(api.env.contains(&"KEY=s3cret".to_string()));
    assert!(api
        .env
        .iter()
        .any(|e| e.starts_with("DATABASE_URL=postgres://berth:")));
    // The api is on the private network (as shop-api), on the egress network (a route out,
    // e.g. to an external database) and on the edge network with the proxy.
    let nets: Vec<_> = api.networks.iter().map(|n| n.0.as_str()).collect();
    assert_eq!(nets, ["shop-private", "shop-egress", "shop-edge"]);
    let pg = h.groups().nth(1).unwrap();
    assert!(pg.recreate);
    assert_eq!(
        pg.volume,
        Some((
            "shop-postgres-data".into(),
            "/var/lib/postgresql/data".into()
        ))
    );
    assert!(pg.env.iter().any(|e| e.starts_with("POSTGRES_PASSWORD=")));
    // The database and cache never publish ports and are only on the private network.
    let body = container_body(pg, "berth", 1);
    let hc = body.host_config.unwrap();
    assert!(hc.port_bindings.is_none());
    assert_eq!(pg.networks.len(), 1);
    let worker = h.groups().nth(3).unwrap();
    assert_eq!(worker.object.label(), "worker/shop-render");
    assert_eq!(worker.container_name(2), "shop-render-2");
    assert_eq!(worker.replicas, 1);
    let wnets: Vec<_> = worker.networks.iter().map(|n| n.0.as_str()).collect();
    assert_eq!(wnets, ["shop-private", "shop-egress"]);
    let nets = networks(&h);
    assert!(nets["shop-private"].0.internal);
    assert!(!nets["shop-edge"].0.internal);
    assert!(!nets["shop-egress"].0.internal);
    // Only the private network carries the database and the cache.
    for g in h.groups() {
        let on: Vec<_> = g.networks.iter().map(|n| n.0.as_str()).collect();
        if g.name().ends_with("postgres") || g.name().ends_with("redis") {
            assert_eq!(on, ["shop-private"], "{}", g.name());
        }
    }
}

#[test]
fn labels_and_health() {
    let h = host(DEMO);
    let api = h.groups().next().unwrap();
    let body = container_body(api, "inst", 3);
    let l = body.labels.unwrap();
    assert_eq!(l[labels::STACK], "shop");
    assert_eq!(l[labels::COMPONENT], "api");
    assert_eq!(l[labels::REPLICA], "3");
    assert_eq!(l[labels::INSTANCE], "inst");
    assert_eq!(l[labels::SPEC_HASH], api.component.spec_hash);
    // The HTTP check is berth's own: the image's HEALTHCHECK is switched off.
    let hc = body.healthcheck.unwrap();
    assert_eq!(hc.test.unwrap(), ["NONE"]);
    let hc = body.host_config.unwrap();
    assert_eq!(
        hc.restart_policy.unwrap().name,
        Some(RestartPolicyNameEnum::UNLESS_STOPPED)
    );
    // Hardened as the pods are.
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.cap_drop.unwrap(), ["ALL"]);
    assert_eq!(hc.security_opt.unwrap(), ["no-new-privileges:true"]);
    assert_eq!(hc.tmpfs.unwrap()["/tmp"], SCRATCH_TMPFS);
    let pg = h.groups().find(|g| g.component.name == "postgres").unwrap();
    assert_eq!(
        container_body(pg, "inst", 1).user.as_deref(),
        Some("999:999")
    );
}

#[test]
fn a_bad_object_is_reported_and_the_others_planned() {
    let text = format!(
        "{DEMO}\n---\napiVersion: berth.dev/v1alpha1\nkind: AppStack\nmetadata: {{name: broken}}\nspec: {{api: {{}}}}\n"
    );
    let h = host(&text);
    assert_eq!(h.errors.len(), 1);
    assert_eq!(h.errors[0].key.name, "broken");
    assert_eq!(h.objects.len(), 2);
}

#[test]
fn a_missing_user_secret_fails_only_its_stack() {
    let text = DEMO.split("---").next().unwrap();
    let h = host(text);
    assert_eq!(h.errors.len(), 1);
    assert_eq!(h.errors[0].reason, "SecretNotFound");
    assert!(!h.errors[0].message.contains("s3cret"));
}
