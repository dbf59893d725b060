//! The Helm chart, checked with a real helm binary (installed by .ci/install-helm): it lints,
//! renders into valid Kubernetes objects, ships the same CRDs as crds/, and grants the operator
//! what it needs and no more.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, RoleBinding};
use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn helm(args: &[&str]) -> String {
    let bin = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    let out = Command::new(&bin)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}; install it with .ci/install-helm"));
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "rel",
        "charts/berth",
        "--namespace",
        "berth-system",
    ];
    args.extend_from_slice(extra);
    serde_norway::Deserializer::from_str(&helm(&args))
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind}: {e}")))
        .collect()
}

#[test]
fn chart_lints() {
    let out = helm(&["lint", "charts/berth", "--strict"]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn chart_crds_are_the_generated_ones() {
    for (file, body) in berth::api::crd_files().unwrap() {
        let path = repo().join("charts/berth/crds").join(&file);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == body,
            "{} differs from the code: run `make crds`",
            path.display()
        );
    }
}

#[test]
fn default_render_is_a_working_operator() {
    let docs = render(&[]);
    let deployments: Vec<Deployment> = find(&docs, "Deployment");
    assert_eq!(deployments.len(), 1);
    let spec = deployments[0].spec.as_ref().unwrap();
    assert_eq!(
        spec.replicas,
        Some(2),
        "two replicas behind leader election"
    );
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "operator");
    assert!(
        args.contains(&"--ingress-class=nginx".to_string()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "watches all namespaces"
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    assert_eq!(
        c.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    assert_eq!(find::<Value>(&docs, "ClusterRoleBinding").len(), 1);
}

#[test]
fn namespaced_install_binds_only_that_namespace() {
    let docs = render(&["--set", "watchNamespace=shop"]);
    assert!(find::<Value>(&docs, "ClusterRoleBinding").is_empty());
    let bindings: Vec<RoleBinding> = find(&docs, "RoleBinding");
    assert!(bindings
        .iter()
        .any(|b| b.metadata.namespace.as_deref() == Some("shop")));
    let d: Vec<Deployment> = find(&docs, "Deployment");
    let args = d[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.contains(&"--namespace=shop".to_string()), "{args:?}");
}

fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups
            .as_ref()
            .is_some_and(|g| g.iter().any(|x| x == group))
            && r.resources
                .as_ref()
                .is_some_and(|g| g.iter().any(|x| x == resource))
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn cluster_role_is_least_privilege() {
    let docs = render(&[]);
    let roles: Vec<ClusterRole> = find(&docs, "ClusterRole");
    let rules = roles[0].rules.clone().unwrap();
    for r in &rules {
        assert!(
            !r.verbs.iter().any(|v| v == "*"),
            "no wildcard verbs: {r:?}"
        );
        assert!(
            !r.resources.iter().flatten().any(|v| v == "*"),
            "no wildcard resources: {r:?}"
        );
        assert!(
            !r.api_groups.iter().flatten().any(|v| v == "*"),
            "no wildcard groups: {r:?}"
        );
    }
    for kind in ["appstacks", "workers", "certificates", "backups"] {
        for verb in ["get", "list", "watch", "patch"] {
            assert!(allows(&rules, "berth.dev", kind, verb), "{kind} {verb}");
        }
        assert!(allows(
            &rules,
            "berth.dev",
            &format!("{kind}/status"),
            "patch"
        ));
    }
    for (group, resource) in [
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("", "services"),
        ("", "secrets"),
        ("", "persistentvolumeclaims"),
        ("networking.k8s.io", "ingresses"),
        ("networking.k8s.io", "networkpolicies"),
        ("batch", "cronjobs"),
    ] {
        for verb in ["list", "watch", "create", "patch", "delete"] {
            assert!(
                allows(&rules, group, resource, verb),
                "{group}/{resource} {verb}"
            );
        }
    }
    assert!(allows(&rules, "events.k8s.io", "events", "create"));
    // Nothing the operator does not touch: no pods/exec, no nodes, no RBAC escalation.
    for (group, resource) in [
        ("", "pods/exec"),
        ("", "nodes"),
        ("rbac.authorization.k8s.io", "clusterroles"),
    ] {
        assert!(
            !allows(&rules, group, resource, "create"),
            "{group}/{resource}"
        );
    }
}
