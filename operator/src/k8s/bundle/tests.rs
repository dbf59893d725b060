//! Builder tests: the objects of whole stacks, field by field where it matters.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use kube::ResourceExt;
use serde_json::json;

use super::*;
use crate::api::AppStack;
use crate::k8s::network;
use crate::plan::tests::{external, minimal, stack, vidgen};
use crate::plan::{plan_stack, Observed};

fn with_uid(mut s: AppStack) -> AppStack {
    s.metadata.uid = Some("uid-1".into());
    s
}

fn bundle(s: &AppStack) -> Bundle {
    let plan = plan_stack(s, &Observed::default()).unwrap();
    build(&Owner::of(s), &plan, &BuildOptions::default())
}

fn names<T: kube::Resource>(items: &[T]) -> Vec<String> {
    items
        .iter()
        .map(|i| i.meta().name.clone().unwrap())
        .collect()
}

fn pod(b: &Bundle, name: &str) -> PodSpec {
    b.deployments
        .iter()
        .find(|d| d.name_any() == name)
        .map(|d| d.spec.clone().unwrap().template.spec.unwrap())
        .or_else(|| {
            b.stateful_sets
                .iter()
                .find(|d| d.name_any() == name)
                .map(|d| d.spec.clone().unwrap().template.spec.unwrap())
        })
        .unwrap_or_else(|| panic!("no workload {name}"))
}

fn main_container(b: &Bundle, name: &str) -> Container {
    pod(b, name).containers[0].clone()
}

#[test]
fn objects_of_each_stack() {
    let b = bundle(&vidgen());
    assert_eq!(names(&b.deployments), ["vidgen-api", "vidgen-redis"]);
    assert_eq!(
        names(&b.stateful_sets),
        ["vidgen-postgres", "vidgen-qdrant"]
    );
    assert_eq!(
        names(&b.services),
        [
            "vidgen-api",
            "vidgen-postgres",
            "vidgen-redis",
            "vidgen-qdrant"
        ]
    );
    assert_eq!(
        names(&b.ingresses),
        ["vidgen-api-generate", "vidgen-api", "vidgen-ws"]
    );
    assert_eq!(
        names(&b.network_policies),
        [
            "vidgen-default-deny",
            "vidgen-api-ingress",
            "vidgen-postgres-ingress",
            "vidgen-redis-ingress",
            "vidgen-qdrant-ingress"
        ]
    );
    assert_eq!(names(&b.workers), ["vidgen-render"]);
    assert_eq!(names(&b.certificates), ["vidgen-tls"]);
    assert_eq!(names(&b.backups), ["vidgen"]);

    let b = bundle(&external());
    assert_eq!(names(&b.deployments), ["ext-api"]);
    assert!(b.stateful_sets.is_empty() && b.ingresses.is_empty());
    let b = bundle(&minimal());
    assert_eq!(
        names(&b.network_policies),
        ["tiny-default-deny", "tiny-api-ingress"]
    );
}

#[test]
fn every_object_is_labelled_and_owned() {
    let s = with_uid(vidgen());
    let b = bundle(&s);
    let values = b.to_values().unwrap();
    assert_eq!(values.len(), 2 + 2 + 4 + 3 + 5 + 1 + 1 + 1);
    for v in &values {
        let labels = &v["metadata"]["labels"];
        for (k, want) in [
            ("app.kubernetes.io/instance", "vidgen"),
            ("app.kubernetes.io/part-of", "berth"),
            ("app.kubernetes.io/managed-by", "berth"),
            ("berth.dev/stack", "vidgen"),
        ] {
            assert_eq!(labels[k], want, "{k} on {}", v["metadata"]["name"]);
        }
        assert_eq!(v["metadata"]["namespace"], "prod");
        let owner = &v["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "AppStack");
        assert_eq!(owner["uid"], "uid-1");
        assert_eq!(owner["controller"], true);
        assert!(v["apiVersion"].is_string() && v["kind"].is_string());
    }
    let api = &b.deployments[0].metadata.labels.clone().unwrap();
    assert_eq!(api["app.kubernetes.io/name"], "api");
    assert_eq!(api["app.kubernetes.io/component"], "api");
}

#[test]
fn api_deployment() {
    let b = bundle(&vidgen());
    let d = &b.deployments[0];
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let ru = spec
        .strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    assert_eq!(serde_json::to_value(&ru.max_unavailable).unwrap(), json!(0));
    let v = serde_json::to_value(&spec.template).unwrap();
    let pod = &v["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/acme/vidgen-api:1.4.2");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/tmp");
    assert_eq!(pod["volumes"][0]["emptyDir"], json!({}));
    for p in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[p]["httpGet"]["path"], "/health");
        assert_eq!(c[p]["httpGet"]["port"], 3000);
        assert_eq!(c[p]["periodSeconds"], 10);
        assert_eq!(c[p]["failureThreshold"], 3);
    }
    // 10 s start period at 10 s intervals: one extra attempt.
    assert_eq!(c["startupProbe"]["failureThreshold"], 4);
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}})
    );
    let env = c["env"].as_array().unwrap();
    let db = env.iter().find(|e| e["name"] == "DATABASE_URL").unwrap();
    assert_eq!(
        db["valueFrom"]["secretKeyRef"],
        json!({"name": "vidgen-postgres-credentials", "key": "url", "optional": false})
    );
    assert!(db.get("value").is_none());
    let init = pod["initContainers"].as_array().unwrap();
    let init_names: Vec<_> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(init_names, ["wait-for-postgres", "wait-for-redis"]);
    assert_eq!(init[0]["image"], "postgres:16");
    let script = init[0]["command"][2].as_str().unwrap();
    assert!(
        script.starts_with(r#"until pg_isready -q -t 2 -d "$DATABASE_URL"; do"#),
        "{script}"
    );
    assert_eq!(init[0]["securityContext"]["runAsUser"], 999);
    assert_eq!(
        init[1]["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        "vidgen-redis-credentials"
    );
}

#[test]
fn postgres_stateful_set() {
    let b = bundle(&vidgen());
    let sts = &b.stateful_sets[0];
    let v = serde_json::to_value(sts).unwrap();
    assert_eq!(v["spec"]["serviceName"], "vidgen-postgres");
    let claim = &v["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], "data");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "10Gi");
    let c = main_container(&b, "vidgen-postgres");
    let probe = c.readiness_probe.unwrap().exec.unwrap().command.unwrap();
    assert!(probe[2].starts_with("pg_isready"));
    let mounts: Vec<_> = c
        .volume_mounts
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.mount_path))
        .collect();
    assert!(mounts.contains(&("data".into(), "/var/lib/postgresql/data".into())));
    assert!(mounts.contains(&("scratch-1".into(), "/var/run/postgresql".into())));
    let pod = pod(&b, "vidgen-postgres");
    let sc = pod.security_context.unwrap();
    assert_eq!((sc.run_as_user, sc.fs_group), (Some(999), Some(999)));
    assert_eq!(
        sts.metadata.annotations.as_ref().unwrap()["berth.dev/spec-hash"].len(),
        16
    );
}

#[test]
fn services_select_their_component() {
    let b = bundle(&vidgen());
    let s = serde_json::to_value(&b.services[1]).unwrap();
    assert_eq!(
        s["spec"],
        json!({"type": "ClusterIP",
               "selector": {"berth.dev/stack": "vidgen", "berth.dev/component": "postgres"},
               "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres", "protocol": "TCP"}]})
    );
}

#[test]
fn ingress_annotations_per_route() {
    let b = bundle(&vidgen());
    let cases = [
        (
            "vidgen-api-generate",
            "/api/generate",
            Some(("2", "3")),
            false,
        ),
        ("vidgen-api", "/api", Some(("10", "2")), false),
        ("vidgen-ws", "/ws", None, true),
    ];
    for (name, path, limit, ws) in cases {
        let i = b.ingresses.iter().find(|i| i.name_any() == name).unwrap();
        let a = i.metadata.annotations.clone().unwrap();
        assert_eq!(a[network::nginx::BODY_SIZE], "524288000");
        assert_eq!(
            a.get(network::nginx::LIMIT_RPS).map(String::as_str),
            limit.map(|l| l.0)
        );
        assert_eq!(
            a.get(network::nginx::LIMIT_BURST_MULTIPLIER)
                .map(String::as_str),
            limit.map(|l| l.1)
        );
        assert_eq!(a.contains_key(network::nginx::READ_TIMEOUT), ws);
        let v = serde_json::to_value(i).unwrap();
        assert_eq!(v["spec"]["ingressClassName"], "nginx");
        assert_eq!(
            v["spec"]["tls"],
            json!([{"hosts": ["vidgen.example.com"], "secretName": "vidgen-tls"}])
        );
        let rule = &v["spec"]["rules"][0];
        assert_eq!(rule["host"], "vidgen.example.com");
        assert_eq!(
            rule["http"]["paths"][0],
            json!({"path": path, "pathType": "Prefix",
                   "backend": {"service": {"name": "vidgen-api", "port": {"name": "http"}}}})
        );
    }
}

#[test]
fn burst_multipliers() {
    for (rps, burst, want) in [(2, 5, 3), (10, 20, 2), (10, 0, 1), (1, 1, 1), (3, 10, 4)] {
        assert_eq!(network::burst_multiplier(rps, burst), want, "{rps}/{burst}");
    }
}

#[test]
fn network_policies_deny_by_default() {
    let b = bundle(&vidgen());
    let v: Vec<_> = b
        .network_policies
        .iter()
        .map(|p| serde_json::to_value(p).unwrap())
        .collect();
    assert_eq!(
        v[0]["spec"],
        json!({"podSelector": {"matchLabels": {"berth.dev/stack": "vidgen"}}, "policyTypes": ["Ingress"]})
    );
    assert_eq!(
        v[1]["spec"]["ingress"][0]["from"],
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}])
    );
    assert_eq!(
        v[1]["spec"]["ingress"][0]["ports"],
        json!([{"port": 3000, "protocol": "TCP"}])
    );
    let pg_from = &v[2]["spec"]["ingress"][0]["from"];
    let kinds: Vec<_> = pg_from
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                .as_str()
                .unwrap()
        })
        .collect();
    // The nightly backup's pods (labelled by backup::kube) reach the database, nothing else.
    assert_eq!(kinds, ["api", "worker", "service", "backup"]);
    assert_eq!(
        v[2]["spec"]["podSelector"]["matchLabels"]["berth.dev/component"],
        "postgres"
    );
    for p in &v[3..] {
        let from = p["spec"]["ingress"][0]["from"].to_string();
        assert!(!from.contains("\"backup\""), "{from}");
    }
}

#[test]
fn children_objects() {
    let b = bundle(&vidgen());
    let w = serde_json::to_value(&b.workers[0]).unwrap();
    assert_eq!(w["apiVersion"], "berth.dev/v1alpha1");
    assert_eq!(w["kind"], "Worker");
    assert_eq!(w["spec"]["appStackRef"], "vidgen");
    assert_eq!(w["metadata"]["labels"]["berth.dev/worker"], "vidgen-render");
    let c = serde_json::to_value(&b.certificates[0]).unwrap();
    assert_eq!(c["spec"]["secretName"], "vidgen-tls");
    assert_eq!(c["spec"]["dnsNames"], json!(["vidgen.example.com"]));
    let bk = serde_json::to_value(&b.backups[0]).unwrap();
    assert_eq!(bk["spec"]["database"], json!({"appStackRef": "vidgen"}));
}

#[test]
fn generated_secret_object() {
    let s = vidgen();
    let plan = plan_stack(&s, &Observed::default()).unwrap();
    let data = crate::plan::wiring::materialize(&plan.secrets[1], &Default::default(), |n| {
        crate::plan::wiring::placeholder(n)
    })
    .unwrap();
    let secret = crate::k8s::children::secret(&Owner::of(&s), &plan.secrets[1], data);
    let v = serde_json::to_value(&secret).unwrap();
    assert_eq!(v["metadata"]["name"], "vidgen-redis-credentials");
    assert_eq!(v["metadata"]["annotations"]["berth.dev/generated"], "true");
    assert_eq!(
        v["stringData"]["url"],
        "redis://default:<generated: 32 random bytes, hex>@vidgen-redis:6379/0"
    );
}

#[test]
fn changes_show_in_the_objects() {
    let a = bundle(&vidgen());
    let mut s = vidgen();
    s.spec.api.replicas = 5;
    let b = bundle(&s);
    assert_ne!(a.deployments[0], b.deployments[0]);
    assert_eq!(a.stateful_sets, b.stateful_sets);
    let s = stack("vidgen", json!({"api": {"image": "a:1"}}));
    assert!(bundle(&s).workers.is_empty());
}

#[test]
fn every_example_builds() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let docs = match crate::manifest::load_paths(&[examples]) {
        Ok(d) => d,
        Err(crate::manifest::LoadError::NotFound { .. })
        | Err(crate::manifest::LoadError::EmptyDir { .. }) => return,
        Err(e) => panic!("{e}"),
    };
    let set = crate::plan::set::ManifestSet::from_documents(&docs);
    for s in &set.stacks {
        let plan = plan_stack(s, &set.observed_for(s)).unwrap();
        let b = build(&Owner::of(s), &plan, &BuildOptions::default());
        assert!(!b.deployments.is_empty(), "{:?}", s.metadata.name);
        let text = serde_json::to_string(&b.to_values().unwrap()).unwrap();
        for secret in &plan.secrets {
            assert!(text.contains(&secret.name));
        }
    }
}
